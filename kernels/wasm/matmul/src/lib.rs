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

/// Rows and columns of C worked on at once: 4×8 sums stay in registers
/// across the whole k loop (8 SIMD registers), so each is stored once.
const ROWS: usize = 4;
const COLS: usize = 8;

pub fn multiply(n: usize, a: &[f32], b: &[f32]) -> Vec<f32> {
    let mut c = vec![0f32; n * n];
    let mut i0 = 0;
    while i0 < n {
        let rows = ROWS.min(n - i0);
        let mut j0 = 0;
        while j0 < n {
            let cols = COLS.min(n - j0);
            if rows == ROWS && cols == COLS {
                block(n, a, b, &mut c, i0, j0);
            } else {
                edge(n, a, b, &mut c, i0..i0 + rows, j0..j0 + cols);
            }
            j0 += cols;
        }
        i0 += rows;
    }
    c
}

/// One full ROWS×COLS block of C. Each sum adds over k in order, as
/// `edge` does: blocking changes where the sums live, not their values.
fn block(n: usize, a: &[f32], b: &[f32], c: &mut [f32], i0: usize, j0: usize) {
    let mut acc = [[0f32; COLS]; ROWS];
    let a_rows: [&[f32]; ROWS] = std::array::from_fn(|r| &a[(i0 + r) * n..(i0 + r + 1) * n]);
    for (k, b_row) in b.chunks_exact(n).enumerate() {
        let bk: &[f32; COLS] = b_row[j0..j0 + COLS].try_into().unwrap();
        for (sums, a_row) in acc.iter_mut().zip(&a_rows) {
            let aik = a_row[k];
            for (s, bkj) in sums.iter_mut().zip(bk) {
                *s += aik * bkj;
            }
        }
    }
    for (r, sums) in acc.iter().enumerate() {
        c[(i0 + r) * n + j0..(i0 + r) * n + j0 + COLS].copy_from_slice(sums);
    }
}

/// The blocks at the right and bottom edges, one sum at a time.
fn edge(n: usize, a: &[f32], b: &[f32], c: &mut [f32], rows: std::ops::Range<usize>, cols: std::ops::Range<usize>) {
    for i in rows {
        for j in cols.clone() {
            let mut s = 0f32;
            for k in 0..n {
                s += a[i * n + k] * b[k * n + j];
            }
            c[i * n + j] = s;
        }
    }
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

idlemesh_guest::kernel!(|task, _| run(&task.params));

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
