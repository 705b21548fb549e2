//! Tools for installers on site: `cairn ports`, `cairn scan modbus`, `cairn tail`. They read
//! devices and ports directly and never touch the outbox or the broker.

pub mod ports;
pub mod scan;
pub mod tail;
