//! One step of an n-body gravity simulation in `f32`.
//!
//! Input: `n` bodies as `[x, y, z, mass]`, then their velocities as
//! `[vx, vy, vz, 0]`, all f32 LE (32·n bytes). Params: `{"n": N, "dt": DT,
//! "eps2": E}` (E softens close encounters). Output: the new positions (mass
//! kept) then the new velocities, in the input's layout. Every sum runs in
//! the same order as in `kernels/wgsl/nbody.wgsl`; WASM and native agree bit
//! for bit, a GPU to within its float precision (its `sqrt` and division
//! need not be correctly rounded).

use serde::Deserialize;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Params {
    pub n: u32,
    pub dt: f32,
    #[serde(default = "default_eps2")]
    pub eps2: f32,
}

fn default_eps2() -> f32 {
    1e-3
}

/// Keeps each body's loop (n iterations) under lavapipe's 65,535 and the
/// work per task modest.
pub const MAX_BODIES: u32 = 16_384;

pub fn step(p: &Params, input: &[u8]) -> Result<Vec<u8>, String> {
    if p.n == 0 || p.n > MAX_BODIES {
        return Err(format!("n {} is outside 1..={MAX_BODIES}", p.n));
    }
    if !(p.dt.is_finite() && p.eps2.is_finite() && p.eps2 > 0.0) {
        return Err("dt must be finite and eps2 finite and > 0".into());
    }
    let n = p.n as usize;
    if input.len() != n * 32 {
        return Err(format!("input is {} bytes; {n} bodies need {}", input.len(), n * 32));
    }
    let f: Vec<f32> = input.chunks_exact(4).map(|b| f32::from_le_bytes(b.try_into().unwrap())).collect();
    let (pos, vel) = f.split_at(n * 4);
    let mut out = vec![0f32; n * 8];
    // Four bodies at a time (each with its own sums, over the others in
    // order): the compiler makes the four lanes one SIMD operation, natively
    // and in WASM. The last n % 4 bodies go one at a time, same formula.
    let mut i = 0;
    while i < n {
        if n - i >= 4 {
            advance::<4>(p, pos, vel, &mut out, i);
            i += 4;
        } else {
            advance::<1>(p, pos, vel, &mut out, i);
            i += 1;
        }
    }
    Ok(out.iter().flat_map(|v| v.to_le_bytes()).collect())
}

/// Bodies `first..first + L` one step on. Their sums are arrays, not
/// vectors: an allocation after the loop, with the sums live across it,
/// had Cranelift spill and reload them in every iteration (docs/benchmarks.md).
#[inline(always)]
fn advance<const L: usize>(p: &Params, pos: &[f32], vel: &[f32], out: &mut [f32], first: usize) {
    let n = pos.len() / 4;
    let (ax, ay, az) = accelerations::<L>(pos, &pos[first * 4..(first + L) * 4], p.eps2);
    for l in 0..L {
        let b = first + l;
        let (xi, yi, zi) = (pos[b * 4], pos[b * 4 + 1], pos[b * 4 + 2]);
        let vx = vel[b * 4] + ax[l] * p.dt;
        let vy = vel[b * 4 + 1] + ay[l] * p.dt;
        let vz = vel[b * 4 + 2] + az[l] * p.dt;
        out[b * 4..b * 4 + 4].copy_from_slice(&[xi + vx * p.dt, yi + vy * p.dt, zi + vz * p.dt, pos[b * 4 + 3]]);
        out[(n + b) * 4..(n + b) * 4 + 4].copy_from_slice(&[vx, vy, vz, 0.0]);
    }
}

/// The accelerations of the `L` bodies in `these` (`[x, y, z, mass]` each)
/// from every body in `all`, each summed over `all` in order. Kept out of
/// line: inlined into `advance`, both builds stopped making the four lanes
/// one SIMD operation (native 52 → 142 ms, docs/benchmarks.md).
#[inline(never)]
fn accelerations<const L: usize>(all: &[f32], these: &[f32], eps2: f32) -> ([f32; L], [f32; L], [f32; L]) {
    let (mut xi, mut yi, mut zi) = ([0f32; L], [0f32; L], [0f32; L]);
    for (l, b) in these.chunks_exact(4).enumerate().take(L) {
        (xi[l], yi[l], zi[l]) = (b[0], b[1], b[2]);
    }
    let (mut ax, mut ay, mut az) = ([0f32; L], [0f32; L], [0f32; L]);
    // Chunks, not indices: no bounds check per body in the hot loop.
    for body in all.chunks_exact(4) {
        for l in 0..L {
            let dx = body[0] - xi[l];
            let dy = body[1] - yi[l];
            let dz = body[2] - zi[l];
            let r2 = dx * dx + dy * dy + dz * dz + eps2;
            let s = body[3] / (r2 * r2.sqrt());
            ax[l] += dx * s;
            ay[l] += dy * s;
            az[l] += dz * s;
        }
    }
    (ax, ay, az)
}

/// A deterministic starting state: `n` bodies in a unit cube, at rest.
pub fn bodies(n: u32, seed: u64) -> Vec<u8> {
    let mut x = seed ^ 0x9E37_79B9_7F4A_7C15;
    let mut next = || {
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        (x.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 40) as f32 / (1u64 << 24) as f32
    };
    let mut f = Vec::with_capacity(n as usize * 8);
    for _ in 0..n {
        let body = [next() * 2.0 - 1.0, next() * 2.0 - 1.0, next() * 2.0 - 1.0, 0.5 + next()];
        f.extend_from_slice(&body);
    }
    f.extend(std::iter::repeat_n(0f32, n as usize * 4));
    f.iter().flat_map(|v| v.to_le_bytes()).collect()
}

pub fn run(input: &[u8], params: &str) -> Result<Vec<u8>, String> {
    let p: Params = serde_json::from_str(params).map_err(|e| format!("bad params: {e}"))?;
    step(&p, input)
}

idlemesh_guest::kernel!(|task, _| run(&task.input, &task.params));

#[cfg(test)]
mod tests {
    use super::*;

    fn floats(b: &[u8]) -> Vec<f32> {
        b.chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect()
    }

    #[test]
    fn two_bodies_attract_and_momentum_is_kept() {
        // Equal masses on the x axis, 2 apart: they move towards each other.
        let mut input = Vec::new();
        for v in [-1.0f32, 0.0, 0.0, 1.0, 1.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0] {
            input.extend_from_slice(&v.to_le_bytes());
        }
        let out = floats(&run(&input, r#"{"n": 2, "dt": 0.1, "eps2": 0.0001}"#).unwrap());
        let (v0, v1) = (out[8], out[12]);
        assert!(v0 > 0.0 && v1 < 0.0, "they attract: {v0} {v1}");
        assert_eq!(v0, -v1, "equal and opposite");
        // a = m / r² = 1/4 (softening aside), v = a·dt.
        assert!((v0 - 0.025).abs() < 1e-5, "{v0}");
        assert_eq!(out[3], 1.0, "mass kept");
    }

    #[test]
    fn bad_input_is_named() {
        assert!(run(&[0; 31], r#"{"n": 1, "dt": 0.1}"#).unwrap_err().contains("32"));
        assert!(run(&[], r#"{"n": 0, "dt": 0.1}"#).is_err());
        assert!(run(&bodies(1, 0), r#"{"n": 1, "dt": 0.1, "eps2": 0}"#).is_err());
        assert_eq!(bodies(3, 1).len(), 96);
        assert_ne!(bodies(3, 1), bodies(3, 2));
    }
}
