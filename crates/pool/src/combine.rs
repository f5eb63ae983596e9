//! Turning task outputs into the job's output: pure functions over values.

use idlemesh_protocol::api::{Combiner, JobSpec, SplitSpec};
use serde::Deserialize;

#[derive(Deserialize)]
struct TileParams {
    tile: Tile,
}

#[derive(Deserialize)]
struct Tile {
    x: u32,
    y: u32,
    width: u32,
    height: u32,
}

/// `outputs` are (task params, canonical output) in task order.
pub(crate) fn combine(spec: &JobSpec, outputs: &[(String, Vec<u8>)]) -> Result<Vec<u8>, String> {
    match spec.combiner {
        Combiner::Concat => Ok(outputs.iter().flat_map(|(_, o)| o.iter().copied()).collect()),
        Combiner::Sum => {
            let mut sum = 0f64;
            for (i, (_, out)) in outputs.iter().enumerate() {
                let text = std::str::from_utf8(out).map_err(|_| format!("task {i}: output is not UTF-8 text"))?;
                sum += text.trim().parse::<f64>().map_err(|_| format!("task {i}: output {text:?} is not a number"))?;
            }
            Ok(serde_json::to_vec(&sum).expect("a number serialises"))
        }
        Combiner::PngTiles => {
            let Some(SplitSpec::Tiles { width, height, .. }) = spec.split else {
                return Err("png_tiles needs a tiles split".into());
            };
            let stride = width as usize * 3;
            let mut canvas = vec![0u8; stride * height as usize];
            for (i, (params, out)) in outputs.iter().enumerate() {
                let TileParams { tile } =
                    serde_json::from_str(params).map_err(|e| format!("task {i}: params without a tile: {e}"))?;
                let row_bytes = tile.width as usize * 3;
                if out.len() != row_bytes * tile.height as usize {
                    return Err(format!(
                        "task {i}: output has {} bytes, a {}x{} RGB tile needs {}",
                        out.len(),
                        tile.width,
                        tile.height,
                        row_bytes * tile.height as usize
                    ));
                }
                if tile.x + tile.width > width || tile.y + tile.height > height {
                    return Err(format!("task {i}: tile lies outside the image"));
                }
                for (r, row) in out.chunks_exact(row_bytes).enumerate() {
                    let at = (tile.y as usize + r) * stride + tile.x as usize * 3;
                    canvas[at..at + row_bytes].copy_from_slice(row);
                }
            }
            let mut png_bytes = Vec::new();
            let mut encoder = png::Encoder::new(&mut png_bytes, width, height);
            encoder.set_color(png::ColorType::Rgb);
            encoder.set_depth(png::BitDepth::Eight);
            let mut writer = encoder.write_header().map_err(|e| e.to_string())?;
            writer.write_image_data(&canvas).map_err(|e| e.to_string())?;
            writer.finish().map_err(|e| e.to_string())?;
            Ok(png_bytes)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn spec(combiner: &str, split: serde_json::Value) -> JobSpec {
        serde_json::from_value(json!({
            "name": "t", "kernel_kind": "wasm", "kernel_sha256": "0".repeat(64),
            "combiner": {"kind": combiner}, "split": split,
        }))
        .unwrap()
    }

    #[test]
    fn concat_and_sum() {
        let s = spec("concat", json!({"kind":"range","start":0,"end":2,"chunk":1}));
        let outs = vec![("{}".to_string(), b"ab".to_vec()), ("{}".to_string(), b"c".to_vec())];
        assert_eq!(combine(&s, &outs).unwrap(), b"abc");
        let s = spec("sum", json!({"kind":"range","start":0,"end":2,"chunk":1}));
        let outs = vec![("{}".to_string(), b"1.5".to_vec()), ("{}".to_string(), b" 2\n".to_vec())];
        assert_eq!(combine(&s, &outs).unwrap(), b"3.5");
        let bad = vec![("{}".to_string(), b"x".to_vec())];
        assert!(combine(&s, &bad).unwrap_err().contains("not a number"));
    }

    #[test]
    fn png_tiles_assemble_and_check_sizes() {
        let s = spec("png_tiles", json!({"kind":"tiles","width":3,"height":1,"tile_width":2,"tile_height":1}));
        let outs = vec![
            (json!({"tile":{"x":0,"y":0,"width":2,"height":1}}).to_string(), vec![1, 2, 3, 4, 5, 6]),
            (json!({"tile":{"x":2,"y":0,"width":1,"height":1}}).to_string(), vec![7, 8, 9]),
        ];
        let png_bytes = combine(&s, &outs).unwrap();
        let decoder = png::Decoder::new(std::io::Cursor::new(png_bytes));
        let mut reader = decoder.read_info().unwrap();
        let mut buf = vec![0; reader.output_buffer_size().unwrap()];
        let info = reader.next_frame(&mut buf).unwrap();
        assert_eq!((info.width, info.height), (3, 1));
        assert_eq!(&buf[..9], &[1, 2, 3, 4, 5, 6, 7, 8, 9]);
        let short = vec![(outs[0].0.clone(), vec![1, 2, 3])];
        assert!(combine(&s, &short).unwrap_err().contains("needs 6"));
    }
}
