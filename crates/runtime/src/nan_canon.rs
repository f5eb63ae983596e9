//! Deterministic NaNs where they can be seen, instead of after every float
//! operation.
//!
//! WebAssembly float arithmetic is deterministic except for the bits of a
//! NaN it produces (sign and payload), which differ between CPUs. Replicas
//! on different machines must agree bit for bit, so those bits must never
//! reach an output. Cranelift's `nan_canonicalization` rewrites the result
//! of every float operation, which cost 4–9× on float kernels here
//! (docs/benchmarks.md). Yet a NaN's bits are observable only where a float
//! becomes bits: a store to memory, a reinterpret to an integer, the sign
//! operand of `copysign`, and a scalar put into a vector (`splat`,
//! `replace_lane`, since vectors are stored as bits). Comparisons, branches,
//! conversions and arithmetic only see *that* a value is NaN, which is
//! deterministic.
//!
//! So before compiling, the kernel is rewritten: the float on top of the
//! stack is canonicalised right before each of those points (a compare and
//! a select, branch-free), and vector float operations, whose lanes go to
//! memory as bits, get their result canonicalised as Cranelift would. The
//! canonical NaNs are Cranelift's (0x7fc00000, 0x7ff8000000000000).
//!
//! One consequence, deterministic like the rest: a NaN *loaded* from memory
//! with an unusual payload and stored again through a float store comes
//! out canonical; integer loads and stores (what `memcpy` uses) keep bits.

use wasm_encoder::reencode::{self, Reencode, ReencodeComponent};
use wasm_encoder::{CodeSection, Component, Function, Ieee32, Ieee64, Instruction, ValType};
use wasmparser::{FunctionBody, Operator, Parser};

mod flow;

/// Part of the compiled-artifact cache key: a new rewrite is a new artifact.
pub const VERSION: u32 = 2;

const CANONICAL_F32: u32 = 0x7fc0_0000;
const CANONICAL_F64: u64 = 0x7ff8_0000_0000_0000;

/// Why a kernel could not be rewritten; its words become the task's
/// refusal ("does not compile: not a valid component: ...").
#[derive(Debug, thiserror::Error)]
pub enum RewriteError {
    #[error("{0}")]
    Invalid(#[from] wasmparser::BinaryReaderError),
    #[error("{0}")]
    Reencode(#[from] wasm_encoder::reencode::Error<std::convert::Infallible>),
    #[error("the kernel could not be rewritten for deterministic NaNs")]
    Panicked,
}

/// The component, with NaN bits made deterministic wherever they are observable.
///
/// The input is a stranger's: it is validated first (the re-encoder assumes
/// well-formed input and indexes by its offsets), and a panic in the
/// re-encoder is still turned into an error, never a dead worker.
pub fn rewrite_component(wasm: &[u8]) -> Result<Vec<u8>, RewriteError> {
    let plans = validate_and_plan(wasm)?;
    std::panic::catch_unwind(|| {
        let mut rewriter = Canonicaliser { plans: plans.into_iter() };
        let mut component = Component::new();
        rewriter.parse_component(&mut component, Parser::new(0), wasm)?;
        Ok(component.finish())
    })
    .unwrap_or(Err(RewriteError::Panicked))
}

/// A core module alone (tests and benchmarks compare against it).
pub fn rewrite_module(wasm: &[u8]) -> Result<Vec<u8>, RewriteError> {
    let plans = validate_and_plan(wasm)?;
    let mut rewriter = Canonicaliser { plans: plans.into_iter() };
    let mut module = wasm_encoder::Module::new();
    rewriter.parse_core_module(&mut module, Parser::new(0), wasm)?;
    Ok(module.finish())
}

fn validate_and_plan(wasm: &[u8]) -> Result<Vec<flow::FunctionPlan>, wasmparser::BinaryReaderError> {
    let mut validator = wasmparser::Validator::new_with_features(wasmparser::WasmFeatures::all());
    let mut plans = Vec::new();
    let mut budget = flow::BUDGET;
    for payload in Parser::new(0).parse_all(wasm) {
        if let wasmparser::ValidPayload::Func(func, body) = validator.payload(&payload?)? {
            let v = func.into_validator(Default::default());
            plans.push(flow::plan(v, &body, &mut budget)?);
        }
    }
    Ok(plans)
}

struct Canonicaliser {
    /// Each defined function's plan, in the order the re-encoder meets the
    /// bodies (across all of a component's core modules).
    plans: std::vec::IntoIter<flow::FunctionPlan>,
}

/// What to do around one instruction.
#[derive(Clone, Copy)]
enum Fix {
    /// Canonicalise the f32 / f64 on top of the stack before it.
    ScalarBefore(ValType),
    /// Canonicalise the v128 it leaves, as 4×f32 / 2×f64 lanes.
    LanesAfter(ValType),
}

fn fix_for(op: &Operator<'_>) -> Option<Fix> {
    use Operator::*;
    Some(match op {
        F32Store { .. } | I32ReinterpretF32 | F32Copysign | F32x4Splat | F32x4ReplaceLane { .. } => {
            Fix::ScalarBefore(ValType::F32)
        }
        F64Store { .. } | I64ReinterpretF64 | F64Copysign | F64x2Splat | F64x2ReplaceLane { .. } => {
            Fix::ScalarBefore(ValType::F64)
        }
        F32x4Add | F32x4Sub | F32x4Mul | F32x4Div | F32x4Sqrt | F32x4Min | F32x4Max | F32x4Ceil | F32x4Floor
        | F32x4Trunc | F32x4Nearest | F32x4DemoteF64x2Zero | F32x4RelaxedMadd | F32x4RelaxedNmadd | F32x4RelaxedMin
        | F32x4RelaxedMax => Fix::LanesAfter(ValType::F32),
        F64x2Add | F64x2Sub | F64x2Mul | F64x2Div | F64x2Sqrt | F64x2Min | F64x2Max | F64x2Ceil | F64x2Floor
        | F64x2Trunc | F64x2Nearest | F64x2PromoteLowF32x4 | F64x2RelaxedMadd | F64x2RelaxedNmadd | F64x2RelaxedMin
        | F64x2RelaxedMax => Fix::LanesAfter(ValType::F64),
        _ => return None,
    })
}

/// The lanes a canonicalised vector float operation reads its top operand as.
fn lanes_read(op: &Operator<'_>) -> Option<ValType> {
    match op {
        Operator::F32x4DemoteF64x2Zero => Some(ValType::F64),
        Operator::F64x2PromoteLowF32x4 => Some(ValType::F32),
        _ => match fix_for(op) {
            Some(Fix::LanesAfter(lanes)) => Some(lanes),
            _ => None,
        },
    }
}

/// Scratch locals appended to each function.
struct Scratch {
    f32: u32,
    f64: u32,
    v128: u32,
}

/// `x` on top → `x` unless it is NaN, then the canonical NaN (branch-free).
fn canonicalise_scalar(f: &mut Function, ty: ValType, s: &Scratch) {
    let (local, nan, ne) = match ty {
        ValType::F32 => (s.f32, Instruction::F32Const(Ieee32::new(CANONICAL_F32)), Instruction::F32Ne),
        _ => (s.f64, Instruction::F64Const(Ieee64::new(CANONICAL_F64)), Instruction::F64Ne),
    };
    f.instruction(&Instruction::LocalSet(local));
    f.instruction(&nan);
    f.instruction(&Instruction::LocalGet(local));
    f.instruction(&Instruction::LocalGet(local));
    f.instruction(&Instruction::LocalGet(local));
    f.instruction(&ne);
    // select(a, b, c) = c ? a : b: the NaN when x != x.
    f.instruction(&Instruction::Select);
}

/// The vector on top → each NaN lane replaced by the canonical NaN.
fn canonicalise_lanes(f: &mut Function, lanes: ValType, s: &Scratch) {
    let (nan, eq) = match lanes {
        ValType::F32 => (splat(&CANONICAL_F32.to_le_bytes()), Instruction::F32x4Eq),
        _ => (splat(&CANONICAL_F64.to_le_bytes()), Instruction::F64x2Eq),
    };
    f.instruction(&Instruction::LocalSet(s.v128));
    f.instruction(&Instruction::LocalGet(s.v128));
    f.instruction(&Instruction::V128Const(nan));
    f.instruction(&Instruction::LocalGet(s.v128));
    f.instruction(&Instruction::LocalGet(s.v128));
    // All ones where a lane equals itself (is not NaN): keep it there.
    f.instruction(&eq);
    f.instruction(&Instruction::V128Bitselect);
}

/// The planned operands canonicalised in place: the values above the
/// deepest are parked in spill locals, the deepest is fixed, and the parked
/// ones come back (each fixed too if planned).
fn canonicalise_operands(f: &mut Function, fix: &flow::OperandFix, spill_base: u32, s: &Scratch) {
    let lanes_at = |depth: usize| fix.dirty.iter().find(|(d, _)| *d == depth).map(|(_, l)| l.encoded());
    for slot in &fix.spills {
        f.instruction(&Instruction::LocalSet(spill_base + slot));
    }
    if let Some(lanes) = lanes_at(fix.spills.len()) {
        canonicalise_lanes(f, lanes, s);
    }
    for (depth, slot) in fix.spills.iter().enumerate().rev() {
        f.instruction(&Instruction::LocalGet(spill_base + slot));
        if let Some(lanes) = lanes_at(depth) {
            canonicalise_lanes(f, lanes, s);
        }
    }
}

/// One lane's little-endian bytes in every lane, as `V128Const` takes them
/// (an i128 whose little-endian bytes are the vector's).
fn splat(lane: &[u8]) -> i128 {
    let mut bytes = [0; 16];
    for (i, b) in bytes.iter_mut().enumerate() {
        *b = lane[i % lane.len()];
    }
    i128::from_le_bytes(bytes)
}

impl Reencode for Canonicaliser {
    type Error = std::convert::Infallible;

    fn parse_function_body(
        &mut self,
        code: &mut CodeSection,
        func: FunctionBody<'_>,
    ) -> Result<(), reencode::Error<Self::Error>> {
        let flow::FunctionPlan { params, flow: plan } =
            self.plans.next().expect("validation planned every function body");
        let mut index = params;
        let mut locals = Vec::new();
        for pair in func.get_locals_reader()? {
            let (count, ty) = pair?;
            index += count;
            locals.push((count, self.val_type(ty)?));
        }
        let scratch = Scratch { f32: index, f64: index + 1, v128: index + 2 };
        locals.extend([(1, ValType::F32), (1, ValType::F64), (1, ValType::V128)]);
        let spill_base = index + 3;
        if let Some(plan) = &plan {
            for ty in &plan.spills {
                locals.push((1, self.val_type(*ty)?));
            }
        }
        let mut f = Function::new(locals);
        let mut reader = func.get_operators_reader()?;
        let mut ops = Vec::new();
        while !reader.eof() {
            ops.push(reader.read()?);
        }
        if let Some(plan) = &plan {
            assert_eq!(plan.operators, ops.len(), "a plan is applied to the body it was made for");
        }
        let mut ops = ops.into_iter().enumerate().peekable();
        while let Some((i, op)) = ops.next() {
            let fix = fix_for(&op);
            if let Some(operands) = plan.as_ref().and_then(|p| p.fixes.get(&i)) {
                canonicalise_operands(&mut f, operands, spill_base, &scratch);
            }
            if let Some(Fix::ScalarBefore(ty)) = fix {
                canonicalise_scalar(&mut f, ty, &scratch);
            }
            f.instruction(&self.instruction(op)?);
            // Without a plan, every vector float result is made canonical
            // at once, unless the next operation reads it as the same lanes
            // and makes its own (canonicalised) result.
            if let (None, Some(Fix::LanesAfter(lanes))) = (&plan, fix) {
                let consumed = ops.peek().is_some_and(|(_, next)| lanes_read(next) == Some(lanes));
                if !consumed {
                    canonicalise_lanes(&mut f, lanes, &scratch);
                }
            }
        }
        code.function(&f);
        Ok(())
    }
}

impl ReencodeComponent for Canonicaliser {}

#[cfg(test)]
mod tests {
    use wasmparser::Payload;

    use super::*;

    fn run_f32(module_wat: &str, rewrite: bool) -> Vec<u8> {
        let mut wasm = wat::parse_str(module_wat).unwrap();
        if rewrite {
            wasm = rewrite_module(&wasm).unwrap();
        }
        let mut config = wasmtime::Config::new();
        config.cranelift_nan_canonicalization(false);
        let engine = wasmtime::Engine::new(&config).unwrap();
        let module = wasmtime::Module::new(&engine, &wasm).unwrap();
        let mut store = wasmtime::Store::new(&engine, ());
        let instance = wasmtime::Instance::new(&mut store, &module, &[]).unwrap();
        instance.get_typed_func::<(), ()>(&mut store, "run").unwrap().call(&mut store, ()).unwrap();
        let memory = instance.get_memory(&mut store, "memory").unwrap();
        memory.data(&store)[..48].to_vec()
    }

    /// Each observable way out of a float, fed a NaN with a payload.
    const PROBE: &str = r#"(module
      (memory (export "memory") 1)
      (func $nan32 (result f32) (f32.reinterpret_i32 (i32.const 0xffc01234)))
      (func $nan64 (result f64) (f64.reinterpret_i64 (i64.const 0xfff8000000005678)))
      (func (export "run") (local $x f32)
        (f32.store (i32.const 0) (call $nan32))
        (f64.store (i32.const 8) (call $nan64))
        (i32.store (i32.const 16) (i32.reinterpret_f32 (call $nan32)))
        (f32.store (i32.const 20) (f32.copysign (f32.const 1) (call $nan32)))
        (v128.store (i32.const 32) (f32x4.splat (call $nan32)))
        ;; ordinary values pass unchanged
        (local.set $x (f32.const -2.5))
        (f32.store (i32.const 24) (local.get $x))
        (f32.store (i32.const 28) (f32.sqrt (f32.const 4)))))"#;

    #[test]
    fn every_observable_nan_comes_out_canonical_and_numbers_unchanged() {
        let plain = run_f32(PROBE, false);
        let fixed = run_f32(PROBE, true);
        let word = |m: &[u8], at: usize| u32::from_le_bytes(m[at..at + 4].try_into().unwrap());
        // Without the rewrite the payloads get through (this is what differs between CPUs).
        assert_eq!(word(&plain, 0), 0xffc0_1234);
        assert_eq!(word(&plain, 20), (-1.0f32).to_bits(), "copysign took the NaN's sign");
        // With it, every one is canonical.
        assert_eq!(word(&fixed, 0), CANONICAL_F32);
        assert_eq!(u64::from_le_bytes(fixed[8..16].try_into().unwrap()), CANONICAL_F64);
        assert_eq!(word(&fixed, 16), CANONICAL_F32);
        assert_eq!(word(&fixed, 20), 1.0f32.to_bits(), "copysign sees the canonical (positive) NaN");
        for lane in 0..4 {
            assert_eq!(word(&fixed, 32 + 4 * lane), CANONICAL_F32);
        }
        assert_eq!(f32::from_le_bytes(fixed[24..28].try_into().unwrap()), -2.5);
        assert_eq!(f32::from_le_bytes(fixed[28..32].try_into().unwrap()), 2.0);
    }

    #[test]
    fn chained_vector_ops_are_canonicalised_once_and_never_across_lane_types() {
        let wat = r#"(module
          (memory (export "memory") 1)
          (func (export "run")
            ;; div makes a NaN in lane 0 and feeds add directly (same lanes)
            (v128.store (i32.const 0)
              (f32x4.add (v128.const f32x4 0 0 0 0)
                (f32x4.div (v128.const f32x4 0 1 2 3) (v128.const f32x4 0 1 1 1))))
            ;; the same NaN read as f64 lanes: its bits would leak into a number
            (v128.store (i32.const 16)
              (f64x2.add (v128.const f64x2 0 0)
                (f32x4.div (v128.const f32x4 0 1 2 3) (v128.const f32x4 0 1 1 1))))))"#;
        let m = run_f32(wat, true);
        assert_eq!(u32::from_le_bytes(m[0..4].try_into().unwrap()), CANONICAL_F32);
        assert_eq!(f32::from_le_bytes(m[4..8].try_into().unwrap()), 1.0);
        // Lane 0 of the f64 view is (1.0f32, canonical NaN) as bits: a number, the same everywhere.
        let expected = f64::from_bits((u64::from(1.0f32.to_bits()) << 32) | u64::from(CANONICAL_F32));
        assert_eq!(f64::from_le_bytes(m[16..24].try_into().unwrap()), expected);
    }

    /// How many lane canonicalisations the rewrite put in the module.
    fn lane_fixes(wat: &str) -> usize {
        let wasm = rewrite_module(&wat::parse_str(wat).unwrap()).unwrap();
        let mut count = 0;
        for payload in Parser::new(0).parse_all(&wasm) {
            if let Payload::CodeSectionEntry(body) = payload.unwrap() {
                let mut ops = body.get_operators_reader().unwrap();
                while !ops.eof() {
                    count += usize::from(matches!(ops.read().unwrap(), Operator::V128Bitselect));
                }
            }
        }
        count
    }

    #[test]
    fn a_sum_kept_in_a_local_is_canonicalised_once_where_it_is_stored() {
        // acc += x / x over a loop, lane 0 being 0/0: the CPU's NaN from the first round on.
        let wat = r#"(module
          (memory (export "memory") 1)
          (func (export "run") (local $acc v128) (local $i i32)
            (local.set $acc (v128.const f32x4 0 0 0 0))
            (loop $again
              (local.set $acc (f32x4.add (local.get $acc)
                (f32x4.div (v128.const f32x4 0 1 2 3) (v128.const f32x4 0 1 1 1))))
              (local.set $i (i32.add (local.get $i) (i32.const 1)))
              (br_if $again (i32.lt_u (local.get $i) (i32.const 10))))
            (v128.store (i32.const 0) (local.get $acc))))"#;
        let m = run_f32(wat, true);
        let word = |at: usize| u32::from_le_bytes(m[at..at + 4].try_into().unwrap());
        assert_eq!(word(0), CANONICAL_F32);
        assert_eq!([f32::from_bits(word(4)), f32::from_bits(word(8)), f32::from_bits(word(12))], [10.0, 20.0, 30.0]);
        assert_ne!(u32::from_le_bytes(run_f32(wat, false)[0..4].try_into().unwrap()), CANONICAL_F32);
        assert_eq!(lane_fixes(wat), 1, "one fix, at the store, none in the loop");
    }

    #[test]
    fn bits_loaded_into_a_vector_local_are_never_taken_for_floats() {
        // $v holds loaded bits (a NaN pattern with a payload) and, later, a
        // float result: only the float result may be canonicalised.
        let wat = r#"(module
          (memory (export "memory") 1)
          (data (i32.const 64) "\34\12\c0\ff\00\00\00\00\00\00\00\00\00\00\00\00")
          (func (export "run") (local $v v128)
            (local.set $v (v128.load (i32.const 64)))
            (v128.store (i32.const 0) (local.get $v))
            (local.set $v (f32x4.div (v128.const f32x4 0 1 2 3) (v128.const f32x4 0 1 1 1)))
            (v128.store (i32.const 16) (local.get $v))))"#;
        let m = run_f32(wat, true);
        assert_eq!(u32::from_le_bytes(m[0..4].try_into().unwrap()), 0xffc0_1234, "loaded bits kept");
        assert_eq!(u32::from_le_bytes(m[16..20].try_into().unwrap()), CANONICAL_F32);
    }

    #[test]
    fn a_local_holding_bits_on_one_path_and_a_float_on_another_keeps_both_right() {
        // Round 0 writes a float result to $v, round 1 loaded bits; both are
        // stored after the paths meet, where one read cannot tell them apart.
        let wat = r#"(module
          (memory (export "memory") 1)
          (data (i32.const 64) "\34\12\c0\ff\00\00\00\00\00\00\00\00\00\00\00\00")
          (func (export "run") (local $v v128) (local $i i32)
            (loop $again
              (if (i32.and (local.get $i) (i32.const 1))
                (then (local.set $v (v128.load (i32.const 64))))
                (else (local.set $v (f32x4.div (v128.const f32x4 0 1 2 3) (v128.const f32x4 0 1 1 1)))))
              (v128.store (i32.shl (local.get $i) (i32.const 4)) (local.get $v))
              (local.set $i (i32.add (local.get $i) (i32.const 1)))
              (br_if $again (i32.lt_u (local.get $i) (i32.const 2))))))"#;
        let m = run_f32(wat, true);
        assert_eq!(u32::from_le_bytes(m[0..4].try_into().unwrap()), CANONICAL_F32, "the float, canonical");
        assert_eq!(u32::from_le_bytes(m[16..20].try_into().unwrap()), 0xffc0_1234, "the bits, as loaded");
    }

    #[test]
    fn results_read_from_below_the_top_or_carried_by_a_branch_are_canonical() {
        let wat = r#"(module
          (memory (export "memory") 1)
          (func (export "run")
            ;; read as integers while another operand is on top of it
            (v128.store (i32.const 0)
              (i32x4.add (f32x4.div (v128.const f32x4 0 1 2 3) (v128.const f32x4 0 1 1 1))
                (v128.const i32x4 0 0 0 0)))
            ;; carried out of a block by br_if, under its condition
            (v128.store (i32.const 16)
              (block (result v128)
                (br_if 0 (f32x4.div (v128.const f32x4 0 1 2 3) (v128.const f32x4 0 1 1 1)) (i32.const 1))))
            ;; one lane taken out as a scalar and stored
            (f32.store (i32.const 32)
              (f32x4.extract_lane 0 (f32x4.div (v128.const f32x4 0 1 2 3) (v128.const f32x4 0 1 1 1))))))"#;
        let m = run_f32(wat, true);
        for at in [0, 16, 32] {
            assert_eq!(u32::from_le_bytes(m[at..at + 4].try_into().unwrap()), CANONICAL_F32, "at {at}");
        }
        assert_eq!(f32::from_le_bytes(m[4..8].try_into().unwrap()).to_bits(), 1.0f32.to_bits());
    }

    #[test]
    fn unreachable_code_never_takes_the_values_of_the_blocks_around_it() {
        let wat = r#"(module
          (memory (export "memory") 1)
          (data (i32.const 64) "\34\12\c0\ff\00\00\00\00\00\00\00\00\00\00\00\00")
          (func (export "run")
            ;; a block that ends by branching must not pop the float result below it
            (v128.store (i32.const 0)
              (i32x4.add (f32x4.div (v128.const f32x4 0 1 2 3) (v128.const f32x4 0 1 1 1))
                (block (result v128) (br 0 (v128.const i32x4 0 0 0 0)))))
            ;; dead float code must not mark the loaded bits below it as a float
            (i32.const 16) (v128.load (i32.const 64))
            (if (i32.const 0) (then unreachable f32x4.sqrt drop))
            (v128.store)
            ;; nor plan a fix across its block's edge (the output must validate)
            (f32x4.div (v128.const f32x4 0 1 2 3) (v128.const f32x4 0 1 1 1))
            (i32.const 0)
            (if (i32.const 0) (then unreachable i32x4.add drop))
            (drop) (drop)))"#;
        let m = run_f32(wat, true);
        assert_eq!(u32::from_le_bytes(m[0..4].try_into().unwrap()), CANONICAL_F32);
        assert_eq!(u32::from_le_bytes(m[16..20].try_into().unwrap()), 0xffc0_1234, "loaded bits kept");
    }

    #[test]
    fn malformed_components_are_errors_not_panics() {
        let good = wat::parse_str(r#"(component (core module (func (export "f"))))"#).unwrap();
        assert!(rewrite_component(&good).is_ok());
        for cut in [4, good.len() / 2, good.len() - 1] {
            assert!(rewrite_component(&good[..cut]).is_err(), "cut at {cut}");
        }
        assert!(rewrite_component(b"not wasm at all").is_err());
    }

    #[test]
    fn vector_float_results_are_canonicalised_lane_by_lane() {
        let wat = r#"(module
          (memory (export "memory") 1)
          (func (export "run")
            ;; 0/0 in lane 0 (a NaN whose bits are the CPU's), numbers elsewhere
            (v128.store (i32.const 0)
              (f32x4.div (v128.const f32x4 0 1 2 3) (v128.const f32x4 0 1 1 1)))
            (v128.store (i32.const 16)
              (f64x2.sqrt (v128.const f64x2 -1 16)))))"#;
        let m = run_f32(wat, true);
        let word = |at: usize| u32::from_le_bytes(m[at..at + 4].try_into().unwrap());
        assert_eq!(word(0), CANONICAL_F32);
        assert_eq!([f32::from_bits(word(4)), f32::from_bits(word(8)), f32::from_bits(word(12))], [1.0, 2.0, 3.0]);
        assert_eq!(u64::from_le_bytes(m[16..24].try_into().unwrap()), CANONICAL_F64);
        assert_eq!(f64::from_le_bytes(m[24..32].try_into().unwrap()), 4.0);
    }
}
