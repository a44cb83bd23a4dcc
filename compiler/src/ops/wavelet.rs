//! (being written)

use super::OpDef;

pub static OPS: &[OpDef] = &[];
