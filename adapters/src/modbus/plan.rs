//! Coalescing: points that sit close together are read with one request, so polling 50 points
//! costs a few round trips, not 50.

use super::registers::{Point, Table};
use crate::reading::Value;

/// One read request and the points it serves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// The table read.
    pub table: Table,
    /// First address.
    pub start: u16,
    /// Registers or bits read.
    pub count: u16,
    /// Indices of the points served, into the list given to [`plan`].
    pub points: Vec<usize>,
}

impl Request {
    /// The value of each point this request serves (by index into `points`), decoded from the
    /// device's answer `words`; `None` where the answer is too short to hold it.
    pub fn decode<'a>(
        &'a self,
        points: &'a [Point],
        words: &'a [u16],
    ) -> impl Iterator<Item = (usize, Option<Value>)> + 'a {
        self.points.iter().map(move |&i| {
            let point = &points[i];
            let from = usize::from(point.address - self.start);
            let slice = words.get(from..from + usize::from(point.count()));
            (i, slice.and_then(|w| point.decode_registers(w)))
        })
    }
}

/// Groups `points` into as few requests as the protocol limits allow, merging neighbours whose
/// gap is at most `max_gap` registers (reading a few unused registers beats another round trip).
pub fn plan(points: &[&Point], max_gap: u16) -> Vec<Request> {
    let mut order: Vec<usize> = (0..points.len()).collect();
    order.sort_by_key(|&i| (points[i].table, points[i].address));
    let mut requests: Vec<Request> = Vec::new();
    for i in order {
        let point = points[i];
        let end = u32::from(point.address) + u32::from(point.count());
        if let Some(last) = requests.last_mut()
            && last.table == point.table
            && u32::from(point.address)
                <= u32::from(last.start) + u32::from(last.count) + u32::from(max_gap)
            && end - u32::from(last.start) <= u32::from(point.table.max_per_request())
        {
            let new_end = end.max(u32::from(last.start) + u32::from(last.count));
            last.count = (new_end - u32::from(last.start)) as u16;
            last.points.push(i);
            continue;
        }
        requests.push(Request {
            table: point.table,
            start: point.address,
            count: point.count(),
            points: vec![i],
        });
    }
    requests
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::modbus::registers::PointType;

    fn p(table: Table, address: u16, kind: PointType) -> Point {
        Point::plain(table, address, kind)
    }

    #[test]
    fn neighbours_merge_and_limits_split() {
        let points = [
            p(Table::Input, 0, PointType::F32),
            p(Table::Input, 6, PointType::F32), // gap of 4: merged
            p(Table::Input, 30, PointType::F32), // gap of 22: new request
            p(Table::Holding, 2, PointType::U16), // other table
            p(Table::Input, 2, PointType::F32), // fills the first gap
            p(Table::Coil, 10, PointType::Bool),
            p(Table::Coil, 1500, PointType::Bool), // far away: its own request
        ];
        let refs: Vec<&Point> = points.iter().collect();
        let requests = plan(&refs, 8);
        let summary: Vec<(Table, u16, u16)> = requests
            .iter()
            .map(|r| (r.table, r.start, r.count))
            .collect();
        assert_eq!(
            summary,
            [
                (Table::Holding, 2, 1),
                (Table::Input, 0, 8),
                (Table::Input, 30, 2),
                (Table::Coil, 10, 1),
                (Table::Coil, 1500, 1),
            ]
        );
        assert_eq!(
            requests.iter().map(|r| r.points.len()).sum::<usize>(),
            points.len()
        );
    }

    #[test]
    fn a_request_never_exceeds_125_registers() {
        let points: Vec<Point> = (0..130)
            .map(|a| p(Table::Holding, a, PointType::U16))
            .collect();
        let refs: Vec<&Point> = points.iter().collect();
        let counts: Vec<u16> = plan(&refs, 0).iter().map(|r| r.count).collect();
        assert_eq!(counts, [125, 5]);
        // 50 scattered points a few registers apart: a handful of requests.
        let points: Vec<Point> = (0..50)
            .map(|i| p(Table::Input, i * 4, PointType::F32))
            .collect();
        let refs: Vec<&Point> = points.iter().collect();
        assert_eq!(plan(&refs, 8).len(), 2);
    }
}
