//! Decimal precision: scaling that stays exact in decimal (229 × 0.1 is 22.9, not
//! 22.900000000000002), and rounding a value to what its sensor resolves.
//!
//! A float that is the nearest double to a decimal with few digits prints short in JSON and
//! packs as a small integer in the batch encoding, so exactness here saves bytes on the link.

use crate::reading::Value;

/// The most decimals Cairn rounds to; beyond this a double has no exact decimal to offer.
pub const MAX_DECIMALS: u8 = 12;

/// Digits after the decimal point in the shortest form of `x` (0.1 → 1, 0.25 → 2, 10 → 0),
/// capped at [`MAX_DECIMALS`].
pub fn decimals_of(x: f64) -> u8 {
    if !x.is_finite() {
        return 0;
    }
    // Display for f64 prints the shortest round-trip form and never uses an exponent.
    let text = x.to_string();
    let digits = text.split_once('.').map_or(0, |(_, frac)| frac.len());
    digits.min(usize::from(MAX_DECIMALS)) as u8
}

/// `x` rounded to `decimals` places: the double nearest to that decimal. Values too large to
/// carry that many places exactly, and non-finite ones, are returned unchanged.
pub fn round(x: f64, decimals: u8) -> f64 {
    let power = 10f64.powi(i32::from(decimals.min(MAX_DECIMALS)));
    let scaled = x * power;
    if !scaled.is_finite() || scaled.abs() >= 9_007_199_254_740_992.0 {
        return x;
    }
    // Division by an exact power of ten rounds correctly: the result is the nearest double.
    scaled.round() / power
}

/// The places of `raw * scale + offset` for an integer `raw`: exact in decimal.
pub fn scaled_places(scale: Option<f64>, offset: Option<f64>) -> u8 {
    decimals_of(scale.unwrap_or(1.0)).max(decimals_of(offset.unwrap_or(0.0)))
}

/// `value` multiplied by `scale` and shifted by `offset`. An integer becomes a float only when
/// scaled, and then carries exactly the places the scale and offset give it; a float is
/// scaled as it is (its own precision is the sensor's).
pub fn scale(value: Value, scale: Option<f64>, offset: Option<f64>) -> Value {
    if scale.is_none() && offset.is_none() {
        return value;
    }
    let (factor, shift) = (scale.unwrap_or(1.0), offset.unwrap_or(0.0));
    match value {
        Value::Int(i) => Value::Float(round(
            i as f64 * factor + shift,
            scaled_places(scale, offset),
        )),
        Value::Float(f) => Value::Float(f * factor + shift),
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn places_of_common_scales() {
        assert_eq!(decimals_of(0.1), 1);
        assert_eq!(decimals_of(0.25), 2);
        assert_eq!(decimals_of(0.001), 3);
        assert_eq!(decimals_of(1e-5), 5);
        assert_eq!(decimals_of(10.0), 0);
        assert_eq!(decimals_of(f64::NAN), 0);
        assert_eq!(decimals_of(1.0 / 3.0), MAX_DECIMALS);
    }

    #[test]
    fn scaling_is_exact_in_decimal() {
        assert_eq!(229.0 * 0.1, 22.900000000000002, "the problem this solves");
        assert_eq!(scale(Value::Int(229), Some(0.1), None), Value::Float(22.9));
        assert_eq!(
            scale(Value::Int(-2731), Some(0.1), Some(273.15)),
            Value::Float(0.05)
        );
        assert_eq!(scale(Value::Int(3), Some(0.01), None), Value::Float(0.03));
        assert_eq!(scale(Value::Int(7), None, None), Value::Int(7));
        assert_eq!(
            scale(Value::Float(1.5), Some(2.0), None),
            Value::Float(3.0),
            "floats keep their own precision"
        );
        // Every 16-bit register scaled by 0.1 prints with at most one decimal.
        for raw in -32768..32768_i64 {
            let Value::Float(f) = scale(Value::Int(raw), Some(0.1), None) else {
                panic!()
            };
            let text = f.to_string();
            assert!(
                text.split_once('.').is_none_or(|(_, d)| d.len() <= 1),
                "{raw} -> {text}"
            );
        }
    }

    #[test]
    fn rounding_gives_the_nearest_double() {
        assert_eq!(round(8.251934566450128, 2), 8.25);
        assert_eq!(round(-0.004, 2), -0.0);
        assert_eq!(round(1e300, 3), 1e300);
        assert!(round(f64::NAN, 1).is_nan());
    }
}
