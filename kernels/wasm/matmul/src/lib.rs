//! Dense f32 matrix multiply, C = A × B for n×n matrices generated from a
//! seed (so a task is a few bytes of params, not megabytes of input).
//!
//! Params: `{"n": N, "seed": S}`. Output: C as little-endian f32, row-major.
//! The k-loop adds in the same order in both builds and Rust never fuses or
//! reorders float operations, so WASM and native outputs match bit for bit.

use serde::Deserialize;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Params {
    pub n: usize,
    #[serde(default)]
    pub seed: u64,
}

pub const MAX_N: usize = 2048;

/// Deterministic values in [-1, 1): xorshift64*, top 24 bits as the fraction.
pub fn matrix(n: usize, seed: u64) -> Vec<f32> {
    let mut x = seed ^ 0x9E37_79B9_7F4A_7C15;
    (0..n * n)
        .map(|_| {
            x ^= x >> 12;
            x ^= x << 25;
            x ^= x >> 27;
            let r = x.wrapping_mul(0x2545_F491_4F6C_DD1D);
            ((r >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        })
        .collect()
}

pub fn multiply(n: usize, a: &[f32], b: &[f32]) -> Vec<f32> {
    let mut c = vec![0f32; n * n];
    for i in 0..n {
        let row = &mut c[i * n..(i + 1) * n];
        for k in 0..n {
            let aik = a[i * n + k];
            let brow = &b[k * n..(k + 1) * n];
            // Independent across j: vectorises on both targets.
            for (cj, bkj) in row.iter_mut().zip(brow) {
                *cj += aik * bkj;
            }
        }
    }
    c
}

pub fn run(params: &str) -> Result<Vec<u8>, String> {
    let p: Params = serde_json::from_str(params).map_err(|e| format!("bad params: {e}"))?;
    if p.n == 0 || p.n > MAX_N {
        return Err(format!("n {} is outside 1..={MAX_N}", p.n));
    }
    let a = matrix(p.n, p.seed);
    let b = matrix(p.n, p.seed.wrapping_add(1));
    Ok(multiply(p.n, &a, &b).iter().flat_map(|v| v.to_le_bytes()).collect())
}

#[cfg(target_arch = "wasm32")]
mod component {
    wit_bindgen::generate!({ world: "kernel", path: "../../wit" });

    struct Kernel;

    impl Guest for Kernel {
        fn run(_input: Vec<u8>, params: String, _resume: Option<Vec<u8>>) -> Result<Vec<u8>, String> {
            super::run(&params)
        }
    }

    export!(Kernel);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_answers() {
        // Identity times B is B; a 2×2 by hand.
        let b = matrix(3, 7);
        let mut id = vec![0f32; 9];
        id[0] = 1.0;
        id[4] = 1.0;
        id[8] = 1.0;
        assert_eq!(multiply(3, &id, &b), b);
        assert_eq!(multiply(2, &[1.0, 2.0, 3.0, 4.0], &[5.0, 6.0, 7.0, 8.0]), vec![19.0, 22.0, 43.0, 50.0]);
        assert!(matrix(4, 1).iter().all(|v| (-1.0..1.0).contains(v)));
        assert_ne!(matrix(4, 1), matrix(4, 2));
        assert!(run(r#"{"n":0}"#).is_err());
        assert_eq!(run(r#"{"n":16,"seed":3}"#).unwrap().len(), 16 * 16 * 4);
    }
}
