//! Expanding a job into its tasks: pure, so it is tested on values.

use idlemesh_protocol::api::{Combiner, JobSpec, SplitSpec};
use idlemesh_protocol::{KernelKind, Sha256};
use serde_json::{Value, json};

/// The most tasks one job may have.
pub(crate) const MAX_TASKS: u64 = 1_000_000;

/// One task before it is stored: its params (JSON text) and input bytes.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct TaskSeed {
    pub params: String,
    pub input: Vec<u8>,
    /// Set for a spot check: the output the task must produce.
    pub expected_sha256: Option<Sha256>,
}

/// Checks a job spec and expands it. Errors name the bad field.
pub(crate) fn expand(spec: &JobSpec) -> Result<Vec<TaskSeed>, String> {
    let Value::Object(base) = &spec.params else {
        return Err("params must be a JSON object".into());
    };
    if spec.name.trim().is_empty() || spec.name.chars().count() > 200 {
        return Err("name must be 1..=200 characters".into());
    }
    if spec.replication == 0 || spec.replication > 16 {
        return Err(format!("replication {} is outside 1..=16", spec.replication));
    }
    if spec.quorum == 0 || spec.quorum > spec.replication {
        return Err(format!("quorum {} is outside 1..=replication ({})", spec.quorum, spec.replication));
    }
    if !(spec.credits_per_task.is_finite() && spec.credits_per_task >= 0.0) {
        return Err("credits_per_task must be a finite number >= 0".into());
    }
    if let Some(rate) = spec.credits_per_million_fuel {
        if !(rate.is_finite() && rate >= 0.0) {
            return Err("credits_per_million_fuel must be a finite number >= 0".into());
        }
        if spec.limits.max_fuel.is_none() {
            return Err("credits_per_million_fuel needs limits.max_fuel: metered credit needs metered tasks".into());
        }
    }
    if spec.lease_ms < 1_000 || spec.lease_ms > 7 * 24 * 3_600_000 {
        return Err(format!("lease_ms {} is outside 1000..=604800000", spec.lease_ms));
    }
    if spec.limits.timeout_ms == 0 || spec.limits.max_memory_bytes == 0 {
        return Err("limits.timeout_ms and limits.max_memory_bytes must be > 0".into());
    }
    if spec.limits.max_output_bytes > idlemesh_protocol::MAX_OUTPUT_BYTES {
        return Err(format!(
            "limits.max_output_bytes {} is over {} (64 MiB)",
            spec.limits.max_output_bytes,
            idlemesh_protocol::MAX_OUTPUT_BYTES
        ));
    }
    match (spec.kernel_kind, &spec.wgsl) {
        (KernelKind::Wgsl, None) => return Err("a wgsl job needs a wgsl layout (bindings and invocations)".into()),
        (KernelKind::Wgsl, Some(layout)) => layout.check().map_err(|e| format!("wgsl: {e}"))?,
        (KernelKind::Wasm, Some(_)) => return Err("wgsl is only for kernel_kind wgsl".into()),
        (KernelKind::Wasm, None) => {}
    }
    let with = |extra: Value| {
        let mut params = base.clone();
        if let Value::Object(extra) = extra {
            params.extend(extra);
        }
        Value::Object(params).to_string()
    };
    let seeds: Vec<TaskSeed> = match (&spec.inputs, &spec.split) {
        (Some(inputs), None) => {
            if inputs.is_empty() {
                return Err("inputs is empty".into());
            }
            let params = Value::Object(base.clone()).to_string();
            inputs
                .iter()
                .map(|i| TaskSeed { params: params.clone(), input: i.0.clone(), expected_sha256: None })
                .collect()
        }
        (None, Some(SplitSpec::Range { start, end, chunk })) => {
            if *chunk <= 0 || end <= start {
                return Err("split range needs start < end and chunk > 0".into());
            }
            let count = (end - start + chunk - 1) / chunk;
            if count as u64 > MAX_TASKS {
                return Err(format!("split range makes {count} tasks, more than {MAX_TASKS}"));
            }
            (0..count)
                .map(|i| {
                    let a = start + i * chunk;
                    TaskSeed {
                        params: with(json!({"start": a, "end": (a + chunk).min(*end)})),
                        input: Vec::new(),
                        expected_sha256: None,
                    }
                })
                .collect()
        }
        (None, Some(SplitSpec::Tiles { width, height, tile_width, tile_height })) => {
            if *width == 0 || *height == 0 || *tile_width == 0 || *tile_height == 0 {
                return Err("split tiles needs non-zero width, height, tile_width and tile_height".into());
            }
            let (cols, rows) = (width.div_ceil(*tile_width), height.div_ceil(*tile_height));
            if u64::from(cols) * u64::from(rows) > MAX_TASKS {
                return Err(format!("split tiles makes {} tasks, more than {MAX_TASKS}", cols * rows));
            }
            let mut seeds = Vec::new();
            for row in 0..rows {
                for col in 0..cols {
                    let (x, y) = (col * tile_width, row * tile_height);
                    let tile = json!({"x": x, "y": y, "width": (*tile_width).min(width - x), "height": (*tile_height).min(height - y)});
                    seeds.push(TaskSeed {
                        params: with(json!({"tile": tile})),
                        input: Vec::new(),
                        expected_sha256: None,
                    });
                }
            }
            seeds
        }
        (Some(_), Some(_)) => return Err("give either inputs or split, not both".into()),
        (None, None) => return Err("give inputs or split".into()),
    };
    if spec.combiner == Combiner::PngTiles && !matches!(spec.split, Some(SplitSpec::Tiles { .. })) {
        return Err("combiner png_tiles needs a split of kind tiles".into());
    }
    if spec.spot_checks.len() > seeds.len() {
        return Err(format!("{} spot checks for {} tasks: at most one per task", spec.spot_checks.len(), seeds.len()));
    }
    // Spread the spot checks evenly through the queue, so nothing about their
    // position gives them away.
    let mut seeds = seeds;
    let stride = seeds.len() / spec.spot_checks.len().max(1) + 1;
    for (i, check) in spec.spot_checks.iter().enumerate() {
        if !check.params.is_object() {
            return Err(format!("spot_checks[{i}].params must be a JSON object"));
        }
        let seed = TaskSeed {
            params: with(check.params.clone()),
            input: check.input.0.clone(),
            expected_sha256: Some(check.expected_sha256),
        };
        seeds.insert((i * stride + stride / 2).min(seeds.len()), seed);
    }
    Ok(seeds)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(split: SplitSpec) -> JobSpec {
        serde_json::from_value(json!({
            "name": "t", "kernel_kind": "wasm", "kernel_sha256": "0".repeat(64),
            "params": {"max_iter": 10}, "combiner": {"kind": "concat"}, "split": split,
        }))
        .unwrap()
    }

    #[test]
    fn tiles_cover_the_image_once_with_edge_tiles_clipped() {
        let seeds = expand(&spec(SplitSpec::Tiles { width: 10, height: 5, tile_width: 4, tile_height: 3 })).unwrap();
        assert_eq!(seeds.len(), 3 * 2);
        let mut area = 0;
        for s in &seeds {
            let p: Value = serde_json::from_str(&s.params).unwrap();
            assert_eq!(p["max_iter"], 10);
            area += p["tile"]["width"].as_u64().unwrap() * p["tile"]["height"].as_u64().unwrap();
        }
        assert_eq!(area, 50);
        let last: Value = serde_json::from_str(&seeds[5].params).unwrap();
        assert_eq!(last["tile"], json!({"x": 8, "y": 3, "width": 2, "height": 2}));
    }

    #[test]
    fn ranges_and_bad_specs() {
        let seeds = expand(&spec(SplitSpec::Range { start: 0, end: 10, chunk: 4 })).unwrap();
        let ends: Vec<String> = seeds.iter().map(|s| s.params.clone()).collect();
        assert_eq!(ends.len(), 3);
        assert!(ends[2].contains("\"start\":8") && ends[2].contains("\"end\":10"));
        assert!(expand(&spec(SplitSpec::Range { start: 0, end: 10, chunk: 0 })).is_err());
        let mut s = spec(SplitSpec::Range { start: 0, end: 10, chunk: 1 });
        s.quorum = 2;
        assert!(expand(&s).unwrap_err().contains("quorum"));
        let mut s = spec(SplitSpec::Range { start: 0, end: 10, chunk: 1 });
        s.combiner = Combiner::PngTiles;
        assert!(expand(&s).unwrap_err().contains("png_tiles"));
        let mut s = spec(SplitSpec::Range { start: 0, end: 10, chunk: 1 });
        s.limits.max_output_bytes = idlemesh_protocol::MAX_OUTPUT_BYTES + 1;
        assert!(expand(&s).unwrap_err().contains("limits.max_output_bytes"));
    }
}
