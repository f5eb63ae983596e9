//! How a WGSL compute kernel meets its task: which buffers it binds, where
//! their bytes come from, and how many invocations to dispatch (DESIGN §3).
//!
//! A layout travels inside the signed task manifest, so the device runs the
//! shader exactly as the job owner described it. Sizes and invocation counts
//! may name integer params (`"width*height*4"`), so one layout serves every
//! tile of a job. Everything here is pure: the runtime checks a layout
//! against the shader (with naga) and the device's limits before it runs.
//!
//! ```json
//! {
//!   "entry_point": "main",
//!   "invocations": ["width", "height"],
//!   "bindings": [
//!     {"binding": 0, "role": "params", "fields": [{"name": "width", "type": "u32"}, {"name": "height", "type": "u32"}]},
//!     {"binding": 1, "role": "dispatch"},
//!     {"binding": 2, "role": "output", "size": "width*height*4"}
//!   ]
//! }
//! ```

use std::fmt;

use serde::{Deserialize, Serialize};

/// The most bindings a layout may declare (all in group 0).
pub const MAX_BINDINGS: usize = 8;
/// The most params fields packed into one uniform buffer.
pub const MAX_PARAM_FIELDS: usize = 64;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct WgslLayout {
    /// The `@compute` function to run.
    #[serde(default = "default_entry")]
    pub entry_point: String,
    /// Invocations along x, y, z (one to three entries; missing ones are 1).
    /// The runtime divides by the shader's `@workgroup_size`, rounding up, so
    /// a shader must ignore invocations past the end.
    #[cfg_attr(feature = "openapi", schema(min_items = 1, max_items = 3))]
    pub invocations: Vec<SizeExpr>,
    /// Every resource the shader binds, in `@group(0)`.
    #[cfg_attr(feature = "openapi", schema(min_items = 1, max_items = 8))]
    pub bindings: Vec<Binding>,
}

fn default_entry() -> String {
    "main".into()
}

/// One resource the shader binds at `@group(0) @binding(binding)`: where its
/// bytes come from and where they go.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(tag = "role", rename_all = "snake_case", deny_unknown_fields)]
pub enum Binding {
    /// `var<storage, read>`: the next `size` bytes of the task's input (the
    /// whole rest of it when `size` is absent; only the last input may omit it).
    Input {
        binding: u32,
        #[serde(default)]
        size: Option<SizeExpr>,
    },
    /// `var<storage, read_write>`, zeroed, read back after the run; outputs
    /// are concatenated in binding order to form the task's output.
    Output { binding: u32, size: SizeExpr },
    /// `var<uniform>`: the named params packed as 4-byte scalars, in order.
    Params { binding: u32, fields: Vec<ParamField> },
    /// `var<uniform>` `vec4<u32>`: the first invocation (x, y, z) of the
    /// current slice. A layout with one may be split into short submissions
    /// so a pause or a timeout takes effect between them; without one the
    /// whole dispatch is a single submission.
    Dispatch { binding: u32 },
    /// `var<storage, read_write>` scratch space, zeroed, not read back.
    Scratch { binding: u32, size: SizeExpr },
}

impl Binding {
    pub fn binding(&self) -> u32 {
        match self {
            Self::Input { binding, .. }
            | Self::Output { binding, .. }
            | Self::Params { binding, .. }
            | Self::Dispatch { binding }
            | Self::Scratch { binding, .. } => *binding,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct ParamField {
    pub name: String,
    #[serde(rename = "type")]
    pub ty: Scalar,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "lowercase")]
pub enum Scalar {
    U32,
    I32,
    F32,
}

/// A byte or invocation count: a number, or a product of numbers and integer
/// params such as `"width*height*4"`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(untagged)]
pub enum SizeExpr {
    Literal(u64),
    Product(String),
}

/// Why a layout cannot be used with a task's params.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LayoutError {
    #[error("the layout is malformed: {0}")]
    Malformed(String),
    #[error("param {name:?} {problem}")]
    Param { name: String, problem: String },
    #[error("{what} is {value}, over the cap of {cap}")]
    TooLarge { what: String, value: u64, cap: u64 },
}

impl fmt::Display for SizeExpr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Literal(n) => write!(f, "{n}"),
            Self::Product(s) => f.write_str(s),
        }
    }
}

impl SizeExpr {
    /// The value for these params; overflow is an error, not a wrap.
    pub fn eval(&self, params: &serde_json::Value) -> Result<u64, LayoutError> {
        let text = match self {
            Self::Literal(n) => return Ok(*n),
            Self::Product(s) => s,
        };
        let mut value: u64 = 1;
        for term in text.split('*').map(str::trim) {
            let factor = if term.bytes().all(|b| b.is_ascii_digit()) && !term.is_empty() {
                term.parse::<u64>().map_err(|_| LayoutError::Malformed(format!("{term:?} in {text:?} is too large")))?
            } else if is_identifier(term) {
                param_u64(params, term)?
            } else {
                return Err(LayoutError::Malformed(format!(
                    "{text:?}: each factor must be a number or a param name, not {term:?}"
                )));
            };
            value = value.checked_mul(factor).ok_or_else(|| LayoutError::TooLarge {
                what: format!("{text:?}"),
                value: u64::MAX,
                cap: u64::MAX,
            })?;
        }
        Ok(value)
    }
}

/// A param name, or a dotted path into nested objects (`tile.width`), as a
/// tiled job's params have them.
fn is_identifier(s: &str) -> bool {
    s.split('.').all(|part| {
        let mut chars = part.chars();
        chars.next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
            && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
    })
}

fn param<'a>(params: &'a serde_json::Value, name: &str) -> Result<&'a serde_json::Value, LayoutError> {
    name.split('.')
        .try_fold(params, |v, part| v.get(part))
        .ok_or_else(|| LayoutError::Param { name: name.into(), problem: "is missing from the params".into() })
}

fn param_u64(params: &serde_json::Value, name: &str) -> Result<u64, LayoutError> {
    param(params, name)?
        .as_u64()
        .ok_or_else(|| LayoutError::Param { name: name.into(), problem: "must be a non-negative integer".into() })
}

impl WgslLayout {
    /// Checks what can be checked without the shader or the params.
    pub fn check(&self) -> Result<(), LayoutError> {
        let bad = |m: String| Err(LayoutError::Malformed(m));
        if self.invocations.is_empty() || self.invocations.len() > 3 {
            return bad(format!("invocations has {} entries; give 1 to 3 (x, y, z)", self.invocations.len()));
        }
        if self.bindings.is_empty() || self.bindings.len() > MAX_BINDINGS {
            return bad(format!("{} bindings; give 1 to {MAX_BINDINGS}", self.bindings.len()));
        }
        if !self.bindings.iter().any(|b| matches!(b, Binding::Output { .. })) {
            return bad("no output binding: the kernel would produce nothing".into());
        }
        let mut seen = std::collections::BTreeSet::new();
        for (i, b) in self.bindings.iter().enumerate() {
            if !seen.insert(b.binding()) {
                return bad(format!("binding {} is declared twice", b.binding()));
            }
            match b {
                Binding::Input { binding, size: None } => {
                    let later_input = self.bindings[i + 1..].iter().any(|b| matches!(b, Binding::Input { .. }));
                    if later_input {
                        return bad(format!("input binding {binding} has no size but is not the last input"));
                    }
                }
                Binding::Params { binding, fields } => {
                    if fields.is_empty() || fields.len() > MAX_PARAM_FIELDS {
                        return bad(format!(
                            "params binding {binding} has {} fields; give 1 to {MAX_PARAM_FIELDS}",
                            fields.len()
                        ));
                    }
                    if let Some(f) = fields.iter().find(|f| !is_identifier(&f.name)) {
                        return bad(format!("params field {:?} is not a name", f.name));
                    }
                }
                _ => {}
            }
        }
        if self.bindings.iter().filter(|b| matches!(b, Binding::Dispatch { .. })).count() > 1 {
            return bad("more than one dispatch binding".into());
        }
        Ok(())
    }

    /// Invocations along x, y, z for these params.
    pub fn invocations(&self, params: &serde_json::Value) -> Result<[u64; 3], LayoutError> {
        let mut out = [1u64; 3];
        for (slot, expr) in out.iter_mut().zip(&self.invocations) {
            *slot = expr.eval(params)?;
            if *slot == 0 {
                return Err(LayoutError::Malformed(format!("invocation count {expr} is zero")));
            }
        }
        Ok(out)
    }

    /// The params binding's bytes: each field as a little-endian 4-byte
    /// scalar, padded to 16 bytes as uniform buffers require.
    pub fn pack_params(fields: &[ParamField], params: &serde_json::Value) -> Result<Vec<u8>, LayoutError> {
        let mut bytes = Vec::with_capacity(fields.len() * 4 + 16);
        for f in fields {
            let v = param(params, &f.name)?;
            let problem = |what: &str| LayoutError::Param { name: f.name.clone(), problem: format!("must be {what}") };
            let word = match f.ty {
                Scalar::U32 => u32::try_from(v.as_u64().ok_or_else(|| problem("an integer in 0..=4294967295"))?)
                    .map_err(|_| problem("an integer in 0..=4294967295"))?
                    .to_le_bytes(),
                Scalar::I32 => i32::try_from(v.as_i64().ok_or_else(|| problem("a 32-bit integer"))?)
                    .map_err(|_| problem("a 32-bit integer"))?
                    .to_le_bytes(),
                Scalar::F32 => {
                    let x = v.as_f64().ok_or_else(|| problem("a number"))? as f32;
                    if !x.is_finite() {
                        return Err(problem("a finite 32-bit float"));
                    }
                    x.to_le_bytes()
                }
            };
            bytes.extend_from_slice(&word);
        }
        bytes.resize(bytes.len().div_ceil(16) * 16, 0);
        Ok(bytes)
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn layout(v: serde_json::Value) -> Result<WgslLayout, String> {
        let l: WgslLayout = serde_json::from_value(v).map_err(|e| e.to_string())?;
        l.check().map_err(|e| e.to_string())?;
        Ok(l)
    }

    #[test]
    fn a_tile_layout_parses_and_sizes_follow_the_params() {
        let l = layout(json!({
            "invocations": ["width", "height"],
            "bindings": [
                {"binding": 0, "role": "params", "fields": [{"name": "width", "type": "u32"}, {"name": "scale", "type": "f32"}, {"name": "off", "type": "i32"}]},
                {"binding": 1, "role": "dispatch"},
                {"binding": 2, "role": "input"},
                {"binding": 3, "role": "output", "size": "width*height*4"}
            ]
        }))
        .unwrap();
        assert_eq!(l.entry_point, "main");
        let params = json!({"width": 16, "height": 8, "scale": 0.5, "off": -3});
        assert_eq!(l.invocations(&params).unwrap(), [16, 8, 1]);
        let Binding::Output { size, .. } = &l.bindings[3] else { panic!() };
        assert_eq!(size.eval(&params).unwrap(), 512);
        let Binding::Params { fields, .. } = &l.bindings[0] else { panic!() };
        let packed = WgslLayout::pack_params(fields, &params).unwrap();
        assert_eq!(packed.len(), 16);
        assert_eq!(&packed[..4], &16u32.to_le_bytes());
        assert_eq!(&packed[4..8], &0.5f32.to_le_bytes());
        assert_eq!(&packed[8..12], &(-3i32).to_le_bytes());
    }

    #[test]
    fn bad_layouts_and_params_name_the_problem() {
        let out = json!({"binding": 1, "role": "output", "size": 4});
        for (v, want) in [
            (json!({"invocations": [], "bindings": [out]}), "invocations has 0"),
            (json!({"invocations": [1, 1, 1, 1], "bindings": [out]}), "invocations has 4"),
            (json!({"invocations": [1], "bindings": [{"binding": 0, "role": "input"}]}), "no output"),
            (json!({"invocations": [1], "bindings": [out, out]}), "declared twice"),
            (
                json!({"invocations": [1], "bindings": [{"binding": 0, "role": "input"}, {"binding": 2, "role": "input", "size": 4}, out]}),
                "not the last input",
            ),
            (json!({"invocations": [1], "bindings": [{"binding": 0, "role": "gpu"}, out]}), "unknown variant"),
            (
                json!({"invocations": [1], "bindings": [{"binding": 0, "role": "params", "fields": []}, out]}),
                "0 fields",
            ),
        ] {
            let err = layout(v).unwrap_err();
            assert!(err.contains(want), "{err} should mention {want}");
        }
        let p = json!({"w": 3, "neg": -1, "big": 1u64 << 40, "x": 1.5, "tile": {"width": 5}});
        assert_eq!(SizeExpr::Product("tile.width * w".into()).eval(&p).unwrap(), 15);
        assert!(SizeExpr::Product("w*h".into()).eval(&p).unwrap_err().to_string().contains("\"h\" is missing"));
        assert!(SizeExpr::Product("neg*4".into()).eval(&p).unwrap_err().to_string().contains("non-negative"));
        assert!(SizeExpr::Product("w+1".into()).eval(&p).is_err());
        assert!(SizeExpr::Product("big*big".into()).eval(&p).is_err(), "overflow is refused");
        let f = |ty| vec![ParamField { name: "x".into(), ty }];
        assert!(WgslLayout::pack_params(&f(Scalar::U32), &p).is_err(), "1.5 is not a u32");
        assert!(WgslLayout::pack_params(&f(Scalar::F32), &json!({"x": 1e300})).is_err(), "inf is refused");
        assert!(WgslLayout::pack_params(&f(Scalar::I32), &json!({"x": 1u64 << 33})).is_err());
    }
}
