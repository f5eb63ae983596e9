//! Image downscale by an integer factor with a box filter.
//!
//! Input: RGBA8 pixels, row-major, `width`×`height`. Params: `{"width": W,
//! "height": H, "factor": F}` with W and H multiples of F. Output: RGBA8 of
//! (W/F)×(H/F), each channel the mean of its F×F block rounded to nearest.
//! Integer arithmetic only: every build agrees bit for bit.

use std::borrow::Cow;

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
    downscale_from(p, pixels.len() as u64, |offset, len| {
        Cow::Borrowed(pixels.get(offset..offset + len).unwrap_or_default())
    })
}

/// The same, with the `size` bytes of pixels read a band of F rows at a
/// time by `read(offset, len)`: in WASM from the host (`read-input`), so a
/// large image is never copied whole into the kernel's memory; each band is
/// read, summed and dropped while it is still in the CPU's cache.
pub fn downscale_from<'a>(
    p: &Params,
    size: u64,
    mut read: impl FnMut(usize, usize) -> Cow<'a, [u8]>,
) -> Result<Vec<u8>, String> {
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
    if size != (w * h * 4) as u64 {
        return Err(format!("input is {size} bytes; {w}x{h} RGBA8 needs {}", w * h * 4));
    }
    let (ow, oh) = (w / f, h / f);
    let area = (f * f) as u32;
    let mut out = vec![0u8; ow * oh * 4];
    // A strip of output pixels at a time: each input column's channels
    // summed down the F rows (contiguous bytes into contiguous u16 sums,
    // F·255 fits), then F neighbouring columns summed across, four channels
    // at once. Integer sums: the same values in any order. Summing each
    // block's pixels in place instead left both compilers deinterleaving
    // channels and reducing vectors for every 4-pixel row (docs/benchmarks.md).
    // Each mean is written in its place in a zeroed output, not pushed: in
    // WASM the Vec's length and capacity live in memory, reread per pixel.
    const STRIP: usize = 64;
    let mut columns = vec![0u16; STRIP * f * 4];
    let band_len = w * 4 * f;
    for (oy, out_row) in out.chunks_exact_mut(ow * 4).enumerate() {
        let band = read(oy * band_len, band_len);
        if band.len() != band_len {
            return Err(format!("the input ended early, at band {oy} of {oh}"));
        }
        for first in (0..ow).step_by(STRIP) {
            let strip = &mut columns[..STRIP.min(ow - first) * f * 4];
            let mut rows = band.chunks_exact(w * 4).map(|row| &row[first * f * 4..]);
            // The first row sets the sums, so they need no clearing first.
            for (sum, byte) in strip.iter_mut().zip(rows.next().unwrap_or_default()) {
                *sum = u16::from(*byte);
            }
            for row in rows {
                for (sum, byte) in strip.iter_mut().zip(row) {
                    *sum += u16::from(*byte);
                }
            }
            let out_strip = &mut out_row[first * 4..][..strip.len() / f];
            for (block, mean) in strip.chunks_exact(f * 4).zip(out_strip.chunks_exact_mut(4)) {
                let mut sum = [0u32; 4];
                for px in block.chunks_exact(4) {
                    for c in 0..4 {
                        sum[c] += u32::from(px[c]);
                    }
                }
                for c in 0..4 {
                    mean[c] = ((sum[c] + area / 2) / area) as u8;
                }
            }
        }
    }
    Ok(out)
}

pub fn run(input: &[u8], params: &str) -> Result<Vec<u8>, String> {
    let p: Params = serde_json::from_str(params).map_err(|e| format!("bad params: {e}"))?;
    downscale(&p, input)
}

/// [`run`] with the input read on request (the WASM build's way).
pub fn run_from<'a>(
    size: u64,
    read: impl FnMut(usize, usize) -> Cow<'a, [u8]>,
    params: &str,
) -> Result<Vec<u8>, String> {
    let p: Params = serde_json::from_str(params).map_err(|e| format!("bad params: {e}"))?;
    downscale_from(&p, size, read)
}

// The WASM build reads the image a band at a time with `read-input` (so
// the host hands over an empty `task.input`): it never holds it whole.
#[cfg(target_arch = "wasm32")]
idlemesh_guest::kernel!(|task, _| {
    use idlemesh_guest::input;
    let read = |offset: usize, len: usize| Cow::Owned(input::read(offset as u64, len as u32));
    run_from(input::size(), read, &task.params)
});

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

    /// Each block's mean straight from its definition.
    fn by_definition(pixels: &[u8], w: usize, h: usize, f: usize) -> Vec<u8> {
        let mut out = Vec::new();
        for oy in 0..h / f {
            for ox in 0..w / f {
                for c in 0..4 {
                    let mut sum = 0u32;
                    for y in oy * f..(oy + 1) * f {
                        for x in ox * f..(ox + 1) * f {
                            sum += u32::from(pixels[(y * w + x) * 4 + c]);
                        }
                    }
                    out.push(((sum + (f * f) as u32 / 2) / (f * f) as u32) as u8);
                }
            }
        }
        out
    }

    #[test]
    fn strips_give_each_block_its_mean() {
        // Widths across the 64-pixel strips (a partial last strip too), the
        // largest factor, and bright images whose sums need every bit.
        for (w, h, f, seed) in
            [(520, 8, 4, 1u32), (256, 6, 2, 7), (192, 128, 64, 3), (130, 10, 1, 9), (4160, 64, 64, 255)]
        {
            let pixels: Vec<u8> = (0..(w * h * 4) as u32)
                .map(|i| if seed == 255 { 255 } else { (i.wrapping_mul(2_654_435_761).wrapping_add(seed) >> 24) as u8 })
                .collect();
            let params = format!(r#"{{"width": {w}, "height": {h}, "factor": {f}}}"#);
            assert_eq!(run(&pixels, &params).unwrap(), by_definition(&pixels, w, h, f), "{params}");
        }
    }

    #[test]
    fn bad_input_is_named() {
        assert!(run(&[0; 15], r#"{"width": 2, "height": 2, "factor": 2}"#).unwrap_err().contains("16"));
        assert!(run(&[0; 36], r#"{"width": 3, "height": 3, "factor": 2}"#).unwrap_err().contains("multiple"));
        assert!(run(&[0; 16], r#"{"width": 2, "height": 2, "factor": 0}"#).is_err());
        assert!(run(&[0; 16], r#"{"width": 2}"#).is_err());
    }
}
