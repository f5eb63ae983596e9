//! Image downscale by an integer factor with a box filter.
//!
//! Input: RGBA8 pixels, row-major, `width`×`height`. Params: `{"width": W,
//! "height": H, "factor": F}` with W and H multiples of F. Output: RGBA8 of
//! (W/F)×(H/F), each channel the mean of its F×F block rounded to nearest.
//! Integer arithmetic only: every build agrees bit for bit.

use serde::Deserialize;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Params {
    pub width: u32,
    pub height: u32,
    pub factor: u32,
}

pub const MAX_SIDE: u32 = 16_384;
pub const MAX_FACTOR: u32 = 64;

pub fn downscale(p: &Params, pixels: &[u8]) -> Result<Vec<u8>, String> {
    if p.width == 0 || p.height == 0 || p.width > MAX_SIDE || p.height > MAX_SIDE {
        return Err(format!("image size {}x{} is outside 1..={MAX_SIDE} per side", p.width, p.height));
    }
    if p.factor == 0 || p.factor > MAX_FACTOR {
        return Err(format!("factor {} is outside 1..={MAX_FACTOR}", p.factor));
    }
    if !p.width.is_multiple_of(p.factor) || !p.height.is_multiple_of(p.factor) {
        return Err(format!("{}x{} is not a multiple of the factor {}", p.width, p.height, p.factor));
    }
    let (w, h, f) = (p.width as usize, p.height as usize, p.factor as usize);
    if pixels.len() != w * h * 4 {
        return Err(format!("input is {} bytes; {w}x{h} RGBA8 needs {}", pixels.len(), w * h * 4));
    }
    let (ow, oh) = (w / f, h / f);
    let area = (f * f) as u32;
    let mut out = Vec::with_capacity(ow * oh * 4);
    for oy in 0..oh {
        for ox in 0..ow {
            let mut sum = [0u32; 4];
            for y in oy * f..(oy + 1) * f {
                let row = &pixels[(y * w + ox * f) * 4..(y * w + (ox + 1) * f) * 4];
                for px in row.chunks_exact(4) {
                    for c in 0..4 {
                        sum[c] += u32::from(px[c]);
                    }
                }
            }
            out.extend(sum.map(|s| ((s + area / 2) / area) as u8));
        }
    }
    Ok(out)
}

pub fn run(input: &[u8], params: &str) -> Result<Vec<u8>, String> {
    let p: Params = serde_json::from_str(params).map_err(|e| format!("bad params: {e}"))?;
    downscale(&p, input)
}

#[cfg(target_arch = "wasm32")]
mod component {
    wit_bindgen::generate!({ world: "kernel", path: "../../wit" });

    struct Kernel;

    impl Guest for Kernel {
        fn run(input: Vec<u8>, params: String, _resume: Option<Vec<u8>>) -> Result<Vec<u8>, String> {
            super::run(&input, &params)
        }
    }

    export!(Kernel);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_answers() {
        // A 2x2 image to 1x1: the rounded mean of each channel.
        let px = [0, 10, 255, 1, 1, 10, 255, 2, 2, 10, 0, 3, 3, 11, 0, 4];
        assert_eq!(run(&px, r#"{"width": 2, "height": 2, "factor": 2}"#).unwrap(), vec![2, 10, 128, 3]);
        // Factor 1 is the identity.
        assert_eq!(run(&px, r#"{"width": 2, "height": 2, "factor": 1}"#).unwrap(), px.to_vec());
    }

    #[test]
    fn bad_input_is_named() {
        assert!(run(&[0; 15], r#"{"width": 2, "height": 2, "factor": 2}"#).unwrap_err().contains("16"));
        assert!(run(&[0; 36], r#"{"width": 3, "height": 3, "factor": 2}"#).unwrap_err().contains("multiple"));
        assert!(run(&[0; 16], r#"{"width": 2, "height": 2, "factor": 0}"#).is_err());
        assert!(run(&[0; 16], r#"{"width": 2}"#).is_err());
    }
}
