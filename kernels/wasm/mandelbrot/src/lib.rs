//! Mandelbrot tile kernel.
//!
//! One source, two builds: for `wasm32-wasip2` this crate is a component
//! exporting the `idlemesh:kernel` world; natively it is a plain library so
//! tests can compare the sandboxed output with native output byte for byte.
//! Everything here is IEEE-754 `f64` arithmetic without fused operations, which
//! wasm and x86-64 evaluate identically, so both builds agree bit for bit.
//!
//! Params (JSON): `width`, `height` (the whole image, pixels), `max_iter`,
//! `center_re`, `center_im`, `span` (width of the view in the complex plane)
//! and an optional `tile` `{x, y, width, height}`. The input is empty or a
//! tile description as JSON, which then takes precedence over `params.tile`.
//! Output: the tile's pixels as RGB8, row-major.

use serde::{Deserialize, Serialize};

/// The largest image side we accept; bounds memory before any allocation.
pub const MAX_SIDE: u32 = 16_384;
/// Rows between two checkpoints.
const CHECKPOINT_ROWS: u32 = 64;

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Tile {
    pub x: u32,
    pub y: u32,
    pub width: u32,
    pub height: u32,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Params {
    pub width: u32,
    pub height: u32,
    #[serde(default = "default_max_iter")]
    pub max_iter: u32,
    #[serde(default = "default_center_re")]
    pub center_re: f64,
    #[serde(default)]
    pub center_im: f64,
    #[serde(default = "default_span")]
    pub span: f64,
    #[serde(default)]
    pub tile: Option<Tile>,
}

fn default_max_iter() -> u32 {
    256
}
fn default_center_re() -> f64 {
    -0.5
}
fn default_span() -> f64 {
    3.0
}

impl Params {
    /// The tile to render: the given one, else the whole image.
    pub fn tile_or_whole(&self) -> Tile {
        self.tile.unwrap_or(Tile { x: 0, y: 0, width: self.width, height: self.height })
    }

    fn validate(&self, tile: Tile) -> Result<(), String> {
        if self.width == 0 || self.height == 0 || self.width > MAX_SIDE || self.height > MAX_SIDE {
            return Err(format!("image size {}x{} is outside 1..={MAX_SIDE} per side", self.width, self.height));
        }
        if tile.width == 0 || tile.height == 0 {
            return Err("tile has zero width or height".into());
        }
        let fits_x = tile.x.checked_add(tile.width).is_some_and(|end| end <= self.width);
        let fits_y = tile.y.checked_add(tile.height).is_some_and(|end| end <= self.height);
        if !fits_x || !fits_y {
            return Err(format!(
                "tile {}x{} at ({}, {}) does not fit in the {}x{} image",
                tile.width, tile.height, tile.x, tile.y, self.width, self.height
            ));
        }
        if self.max_iter == 0 || self.max_iter > 1_000_000 {
            return Err(format!("max_iter {} is outside 1..=1000000", self.max_iter));
        }
        if !(self.span.is_finite() && self.span > 0.0 && self.center_re.is_finite() && self.center_im.is_finite()) {
            return Err("center_re, center_im and span must be finite, span > 0".into());
        }
        Ok(())
    }
}

pub use idlemesh_guest::Host;

/// The kernel's entry point, shared by both builds.
///
/// A checkpoint is the number of finished rows (u32 LE) followed by their
/// pixels; `resume` continues from it.
pub fn run(input: &[u8], params: &str, resume: Option<&[u8]>, host: &mut impl Host) -> Result<Vec<u8>, String> {
    let mut params: Params = serde_json::from_str(params).map_err(|e| format!("bad params: {e}"))?;
    if !input.is_empty() {
        let tile: Tile = serde_json::from_slice(input).map_err(|e| format!("bad input tile: {e}"))?;
        params.tile = Some(tile);
    }
    let tile = params.tile_or_whole();
    params.validate(tile)?;
    let row_bytes = tile.width as usize * 3;

    let (mut rows_done, mut pixels) = match resume {
        Some(state) => parse_checkpoint(state, tile, row_bytes)?,
        None => (0, Vec::with_capacity(row_bytes * tile.height as usize)),
    };
    while rows_done < tile.height {
        let end = (rows_done + CHECKPOINT_ROWS).min(tile.height);
        // Progress every row (the host drops repeats), so the user sees a
        // tile move even when it is shorter than a checkpoint.
        for row in rows_done..end {
            render_row(&params, tile, row, &mut pixels);
            host.progress((row + 1) as f32 / tile.height as f32);
        }
        rows_done = end;
        if rows_done < tile.height {
            let mut state = Vec::with_capacity(4 + pixels.len());
            state.extend_from_slice(&rows_done.to_le_bytes());
            state.extend_from_slice(&pixels);
            host.checkpoint(&state);
        }
    }
    Ok(pixels)
}

fn parse_checkpoint(state: &[u8], tile: Tile, row_bytes: usize) -> Result<(u32, Vec<u8>), String> {
    let Some((head, pixels)) = state.split_first_chunk::<4>() else {
        return Err("checkpoint shorter than its header".into());
    };
    let rows = u32::from_le_bytes(*head);
    if rows > tile.height || pixels.len() != rows as usize * row_bytes {
        return Err("checkpoint does not match this tile".into());
    }
    let mut all = Vec::with_capacity(row_bytes * tile.height as usize);
    all.extend_from_slice(pixels);
    Ok((rows, all))
}

/// Renders a tile in one go, natively: the reference the WASM output must equal.
pub fn render_tile(params: &Params, tile: Tile) -> Result<Vec<u8>, String> {
    params.validate(tile)?;
    let mut pixels = Vec::with_capacity(tile.width as usize * tile.height as usize * 3);
    for row in 0..tile.height {
        render_row(params, tile, row, &mut pixels);
    }
    Ok(pixels)
}

fn render_row(p: &Params, tile: Tile, row: u32, out: &mut Vec<u8>) {
    let pixel = p.span / p.width as f64;
    let left = p.center_re - p.span / 2.0;
    let top = p.center_im - pixel * p.height as f64 / 2.0;
    let im = top + (f64::from(tile.y + row) + 0.5) * pixel;
    for col in 0..tile.width {
        let re = left + (f64::from(tile.x + col) + 0.5) * pixel;
        out.extend_from_slice(&colour(escape_time(re, im, p.max_iter), p.max_iter));
    }
}

/// The tile's escape-time counts in `f32`, exactly as the WGSL version
/// (`kernels/wgsl/mandelbrot.wgsl`) computes them: GPUs have no portable
/// `f64`, so this is the reference a GPU's output is held to.
pub fn escape_counts_f32(p: &Params, tile: Tile) -> Result<Vec<u32>, String> {
    p.validate(tile)?;
    let (span, center_re, center_im) = (p.span as f32, p.center_re as f32, p.center_im as f32);
    let pixel = span / p.width as f32;
    let left = center_re - span / 2.0;
    let top = center_im - pixel * p.height as f32 / 2.0;
    let mut counts = Vec::with_capacity(tile.width as usize * tile.height as usize);
    for row in 0..tile.height {
        let c_im = top + ((tile.y + row) as f32 + 0.5) * pixel;
        for col in 0..tile.width {
            let c_re = left + ((tile.x + col) as f32 + 0.5) * pixel;
            let (mut re, mut im, mut i) = (0.0f32, 0.0f32, 0);
            while i < p.max_iter {
                let re2 = re * re;
                let im2 = im * im;
                if re2 + im2 > 4.0 {
                    break;
                }
                im = 2.0 * re * im + c_im;
                re = re2 - im2 + c_re;
                i += 1;
            }
            counts.push(i);
        }
    }
    Ok(counts)
}

/// The colour of one pixel with this escape-time count: what the WASM
/// kernel's image shows for it.
pub fn palette(iter: u32, max_iter: u32) -> [u8; 3] {
    colour(iter, max_iter)
}

#[inline]
fn escape_time(c_re: f64, c_im: f64, max_iter: u32) -> u32 {
    let (mut re, mut im) = (0.0f64, 0.0f64);
    let mut i = 0;
    while i < max_iter {
        let re2 = re * re;
        let im2 = im * im;
        if re2 + im2 > 4.0 {
            break;
        }
        im = 2.0 * re * im + c_im;
        re = re2 - im2 + c_re;
        i += 1;
    }
    i
}

/// A smooth blue-orange palette (Bernstein polynomials); black inside the set.
fn colour(iter: u32, max_iter: u32) -> [u8; 3] {
    if iter >= max_iter {
        return [0, 0, 0];
    }
    let t = (f64::from(iter) / f64::from(max_iter)).sqrt();
    let u = 1.0 - t;
    let channel = |v: f64| (v.clamp(0.0, 1.0) * 255.0) as u8;
    [channel(9.0 * u * t * t * t), channel(15.0 * u * u * t * t), channel(8.5 * u * u * u * t)]
}

idlemesh_guest::kernel!(|task, host| run(&task.input, &task.params, task.resume.as_deref(), host));

#[cfg(test)]
mod tests {
    use super::*;
    use idlemesh_guest::{Recorder, Silent};

    fn params() -> Params {
        serde_json::from_str(r#"{"width":64,"height":48,"max_iter":100}"#).unwrap()
    }

    #[test]
    fn whole_image_equals_its_tiles() {
        let p = params();
        let whole = render_tile(&p, p.tile_or_whole()).unwrap();
        let top = render_tile(&p, Tile { x: 0, y: 0, width: 64, height: 24 }).unwrap();
        let bottom = render_tile(&p, Tile { x: 0, y: 24, width: 64, height: 24 }).unwrap();
        assert_eq!(whole, [top, bottom].concat());
        // The centre of the default view is inside the set: black.
        let mid = (24 * 64 + 32) * 3;
        assert_eq!(&whole[mid..mid + 3], &[0, 0, 0]);
        // The corner is far outside: not black.
        assert_ne!(&whole[0..3], &[0, 0, 0]);
    }

    #[test]
    fn resume_from_a_checkpoint_gives_the_same_pixels() {
        let params = r#"{"width":100,"height":200,"max_iter":50}"#;
        let mut rec = Recorder::default();
        let full = run(b"", params, None, &mut rec).unwrap();
        assert_eq!(rec.checkpoints.len(), 3, "rows 64, 128, 192");
        assert_eq!(rec.progress.len(), 200, "one report per row");
        assert!(rec.progress.windows(2).all(|w| w[0] < w[1]));
        assert_eq!(rec.progress.last(), Some(&1.0));
        let resumed = run(b"", params, Some(&rec.checkpoints[1]), &mut Silent).unwrap();
        assert_eq!(full, resumed);
    }

    #[test]
    fn bad_input_is_named() {
        let err = run(b"", r#"{"width":10,"height":10,"tile":{"x":5,"y":0,"width":10,"height":1}}"#, None, &mut Silent)
            .unwrap_err();
        assert!(err.contains("does not fit"), "{err}");
        assert!(run(b"", "{", None, &mut Silent).unwrap_err().starts_with("bad params"));
        assert!(run(b"", r#"{"width":10,"height":10}"#, Some(b"\x09\0\0\0"), &mut Silent).is_err());
    }
}
