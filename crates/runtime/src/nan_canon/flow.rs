//! Where a vector float result must be made canonical: at its first
//! observing use, not where it is made.
//!
//! A `v128` is only bits, so a vector float result whose lanes may hold a
//! CPU-specific NaN must be canonical before anything reads those bits:
//! a store, an integer or bitwise vector operation, a call, a branch, a
//! block's result. Float operations of the same lanes, comparisons, lane
//! extraction and saturating conversions see only *that* a lane is NaN, so
//! they may take it as it is. This pass follows each function's operand
//! stack (the validator's arity and types) and marks which operands need
//! canonicalising before which operator.
//!
//! Locals are followed too, through the function's control flow (a
//! dataflow fixpoint over its blocks and loops): a sum kept in a local
//! across a loop (matmul's and n-body's accumulators) is canonicalised once,
//! when it is stored, instead of after every add. A local read while it may
//! hold either a float result or plain bits (loaded data, say) cannot be
//! fixed at the read, so such a local is "demoted": every float result
//! written to it is canonicalised at the write, and the analysis reruns.

use std::collections::HashMap;

use wasmparser::{
    BinaryReaderError, FuncValidator, FunctionBody, Operator, ValType, ValidatorResources, WasmModuleResources,
};

/// The lane type a vector float value is read as.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Lanes {
    F32,
    F64,
}

impl Lanes {
    pub(super) fn encoded(self) -> wasm_encoder::ValType {
        match self {
            Lanes::F32 => wasm_encoder::ValType::F32,
            Lanes::F64 => wasm_encoder::ValType::F64,
        }
    }
}

/// What the bits of a value on the operand stack are, as far as NaNs go.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Tag {
    /// Deterministic bits (integer results, loads, canonicalised values).
    Clean,
    /// A constant: canonicalising it changes nothing unless a lane is NaN.
    Const(i128),
    /// A float result whose NaN lanes may carry the CPU's bits.
    Dirty(Lanes),
    /// A local that may hold a float result or plain bits, depending on the path.
    Mixed,
}

impl Tag {
    /// What a local holds where two paths meet.
    fn join(self, other: Tag) -> Tag {
        match (self, other) {
            (a, b) if a == b => a,
            (Tag::Mixed, _) | (_, Tag::Mixed) => Tag::Mixed,
            (Tag::Dirty(l), Tag::Const(c)) | (Tag::Const(c), Tag::Dirty(l)) if !has_nan_lane(c, l) => Tag::Dirty(l),
            (Tag::Dirty(_), _) | (_, Tag::Dirty(_)) => Tag::Mixed,
            // Two different constants, or a constant and other bits: plain bits.
            _ => Tag::Clean,
        }
    }
}

/// What every `v128` local holds at one point (`None`: unreachable).
type Locals = Option<HashMap<u32, Tag>>;

fn join(a: &Locals, b: &Locals) -> Locals {
    match (a, b) {
        (None, x) | (x, None) => x.clone(),
        (Some(a), Some(b)) => {
            Some(a.iter().map(|(l, t)| (*l, t.join(b.get(l).copied().unwrap_or(Tag::Clean)))).collect())
        }
    }
}

/// Canonicalise operands before one operator: each `(depth, lanes)`, depth
/// 0 being the top; the values above the deepest are parked in `spills`
/// (indices into [`Plan::spills`], one per depth) meanwhile.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct OperandFix {
    pub dirty: Vec<(usize, Lanes)>,
    pub spills: Vec<u32>,
}

/// What to insert in one function body.
#[derive(Debug, Default)]
pub(super) struct Plan {
    /// Number of operators in the body, to check the plan is applied to the body it was made for.
    pub operators: usize,
    /// Before operator `i` (its index in the body).
    pub fixes: HashMap<usize, OperandFix>,
    /// Types of the locals that park values during a fix.
    pub spills: Vec<ValType>,
}

/// A function body's parameter count (its scratch locals go after its
/// parameters and locals) and its fixes, `None` when its flow is not
/// followed (then every vector float result is canonicalised at once).
pub(super) struct FunctionPlan {
    pub params: u32,
    pub flow: Option<Plan>,
}

/// One operator's stack effect, as the validator saw it.
struct Step {
    pops: usize,
    pushes: usize,
    /// The operand stack height where the current block's values start:
    /// in unreachable code an operator pops at most down to it.
    base: usize,
    /// Unreachable code: nothing runs, so nothing needs fixing.
    unreachable: bool,
    /// Types of the popped operands, top first (`None`: unknown, in unreachable code).
    types: Vec<Option<ValType>>,
    height_after: usize,
}

/// Validates one function body and plans its fixes. `None` when the body
/// uses something this analysis does not follow (an operator whose stack
/// effect the validator's arity table lacks, exception handling, GC
/// branches): the caller then canonicalises every vector result at once.
pub(super) fn plan(
    mut v: FuncValidator<ValidatorResources>,
    body: &FunctionBody<'_>,
    budget: &mut usize,
) -> Result<FunctionPlan, BinaryReaderError> {
    let params = {
        let r = v.resources();
        r.type_index_of_function(v.index())
            .and_then(|t| r.sub_type_at(t))
            .and_then(|s| match &s.composite_type.inner {
                wasmparser::CompositeInnerType::Func(f) => Some(f.params().len() as u32),
                _ => None,
            })
            .unwrap_or(0)
    };
    let mut total = params;
    for pair in body.get_locals_reader()? {
        let (count, ty) = pair?;
        v.define_locals(body.range().start, count, ty)?;
        total += count;
    }
    let vectors: Vec<u32> = (0..total).filter(|i| v.get_local_type(*i) == Some(ValType::V128)).collect();
    let mut reader = body.get_operators_reader()?;
    let mut ops = Vec::new();
    let mut steps = Vec::new();
    let mut followed = true;
    let mut control_ops = 0;
    while !reader.eof() {
        let offset = reader.original_position();
        let op = reader.read()?;
        let arity = op.operator_arity(&v);
        let (pops, pushes) = arity.map_or((0, 0), |(p, q)| (p as usize, q as usize));
        followed &= arity.is_some() && !unfollowed(&op);
        let types = (0..pops).map(|d| v.get_operand_type(d).flatten()).collect();
        let (base, unreachable) = v.get_control_frame(0).map_or((0, false), |f| (f.height, f.unreachable));
        control_ops += usize::from(is_control(&op));
        v.op(offset, &op)?;
        steps.push(Step { pops, pushes, base, unreachable, types, height_after: v.operand_stack_height() as usize });
        ops.push(op);
    }
    let end = reader.original_position();
    reader.get_binary_reader().finish_expression(&v.visitor(end))?;
    if !followed {
        return Ok(FunctionPlan { params, flow: None });
    }

    // Parameters come from the caller: plain bits. Other locals start at zero.
    let entry: HashMap<u32, Tag> =
        vectors.iter().map(|l| (*l, if *l < params { Tag::Clean } else { Tag::Const(0) })).collect();
    let mut demoted: Vec<u32> = Vec::new();
    let mut headers: HashMap<usize, Locals> = HashMap::new();
    // Each pass settles, demotes more locals, or widens loop headers' states
    // (a lattice of height 3 per local), so the passes are few; a budget on
    // the work keeps a hostile kernel from making this the slow part of
    // compiling it. A pass costs an operator each, and each control
    // operator a join or copy of every vector local's state.
    let pass = ops.len() + control_ops * vectors.len();
    while *budget >= pass {
        *budget -= pass;
        match analyse(&ops, &steps, &entry, &demoted, &headers) {
            Pass::Settled(plan) => return Ok(FunctionPlan { params, flow: Some(plan) }),
            Pass::Demote(locals) => {
                demoted.extend(locals);
                headers.clear();
            }
            Pass::Widen(next) => headers = next,
        }
    }
    // Over budget: without the flow, canonicalise every vector result at once.
    Ok(FunctionPlan { params, flow: None })
}

/// How much analysis one kernel may cost, over all its functions and
/// passes (an operator visited, or one local's state joined, is one).
pub(super) const BUDGET: usize = 50_000_000;

fn is_control(op: &Operator<'_>) -> bool {
    use Operator::*;
    matches!(op, Block { .. } | Loop { .. } | If { .. } | Else | End | Br { .. } | BrIf { .. } | BrTable { .. })
}

fn is_return_call(op: &Operator<'_>) -> bool {
    matches!(op, Operator::ReturnCall { .. } | Operator::ReturnCallIndirect { .. } | Operator::ReturnCallRef { .. })
}

/// What this analysis does not follow: control flow it does not model.
fn unfollowed(op: &Operator<'_>) -> bool {
    use Operator::*;
    matches!(
        op,
        Try { .. }
            | TryTable { .. }
            | Catch { .. }
            | CatchAll
            | Delegate { .. }
            | Rethrow { .. }
            | Throw { .. }
            | ThrowRef
            | BrOnNull { .. }
            | BrOnNonNull { .. }
            | BrOnCast { .. }
            | BrOnCastFail { .. }
    )
}

/// One pass's verdict.
enum Pass {
    Settled(Plan),
    /// These locals are read where they may hold a float result or plain bits.
    Demote(Vec<u32>),
    /// Loop headers' states grew through back edges: go again with these.
    Widen(HashMap<usize, Locals>),
}

/// A block, loop or if being walked.
struct Frame {
    /// The `loop` operator's index, for a loop (branches go to its header).
    loop_at: Option<usize>,
    /// An `if`'s state on entry, until its `else` is seen.
    if_entry: Option<Locals>,
    /// Joined states of the branches to its end.
    at_end: Locals,
}

/// One pass over the body with the loop headers' states from the last one.
fn analyse(
    ops: &[Operator<'_>],
    steps: &[Step],
    entry: &HashMap<u32, Tag>,
    demoted: &[u32],
    headers: &HashMap<usize, Locals>,
) -> Pass {
    let mut plan = Plan { operators: ops.len(), ..Plan::default() };
    let mut spill_slots: HashMap<(ValType, usize), u32> = HashMap::new();
    let mut next_headers: HashMap<usize, Locals> = HashMap::new();
    let mut frames: Vec<Frame> = vec![Frame { loop_at: None, if_entry: None, at_end: None }];
    let mut state: Locals = Some(entry.clone());
    let mut stack: Vec<Tag> = Vec::new();
    let mut to_demote: Vec<u32> = Vec::new();
    for (i, (op, step)) in ops.iter().zip(steps).enumerate() {
        // In unreachable code an operator may pop more than its block holds:
        // the rest are placeholders, never the outer blocks' values.
        let available = stack.len().saturating_sub(step.base).min(step.pops);
        let popped: Vec<Tag> =
            (0..step.pops).map(|d| if d < available { stack[stack.len() - 1 - d] } else { Tag::Clean }).collect();
        let dirty: Vec<(usize, Lanes)> = popped
            .iter()
            .enumerate()
            .filter_map(|(d, t)| match t {
                Tag::Dirty(l) if !step.unreachable && !accepts(op, d, *l, demoted) => Some((d, *l)),
                _ => None,
            })
            .collect();
        let mut fixed = popped.clone();
        if let Some(deepest) = dirty.iter().map(|(d, _)| *d).max() {
            // Values above the deepest are parked in locals of their type;
            // an unknown type is unreachable code, which needs nothing.
            let above: Option<Vec<ValType>> = step.types[..deepest].iter().copied().collect();
            if let (Some(above), Some(Some(_))) = (above, step.types.get(deepest)) {
                let mut nth: HashMap<ValType, usize> = HashMap::new();
                let spills = above
                    .iter()
                    .map(|ty| {
                        let n = nth.entry(*ty).or_default();
                        *n += 1;
                        *spill_slots.entry((*ty, *n - 1)).or_insert_with(|| {
                            plan.spills.push(*ty);
                            plan.spills.len() as u32 - 1
                        })
                    })
                    .collect();
                for (d, _) in &dirty {
                    fixed[*d] = Tag::Clean;
                }
                plan.fixes.insert(i, OperandFix { dirty, spills });
            }
        }

        // Locals and control flow.
        let mut read = None;
        match op {
            Operator::LocalGet { local_index } => {
                if let Some(locals) = &state
                    && let Some(tag) = locals.get(local_index)
                {
                    if *tag == Tag::Mixed {
                        // Read as plain bits for the rest of this pass; the next treats it as demoted.
                        to_demote.push(*local_index);
                        read = Some(Tag::Clean);
                    } else {
                        read = Some(*tag);
                    }
                }
            }
            Operator::LocalSet { local_index } | Operator::LocalTee { local_index } => {
                if let Some(locals) = &mut state
                    && let Some(tag) = locals.get_mut(local_index)
                {
                    *tag = fixed[0];
                }
            }
            Operator::Block { .. } => frames.push(Frame { loop_at: None, if_entry: None, at_end: None }),
            Operator::If { .. } => {
                frames.push(Frame { loop_at: None, if_entry: Some(state.clone()), at_end: None });
            }
            Operator::Loop { .. } => {
                state = join(&state, headers.get(&i).unwrap_or(&None));
                let seen = next_headers.entry(i).or_insert(None);
                *seen = join(seen, &state);
                frames.push(Frame { loop_at: Some(i), if_entry: None, at_end: None });
            }
            Operator::Else => {
                let frame = frames.last_mut().expect("validated: else inside if");
                frame.at_end = join(&frame.at_end, &state);
                state = frame.if_entry.take().unwrap_or(None);
            }
            Operator::End => {
                let frame = frames.pop().expect("validated: end closes a frame");
                // An `if` without `else` also ends by skipping its body.
                state = join(&join(&state, &frame.at_end), &frame.if_entry.unwrap_or(None));
            }
            Operator::Br { relative_depth } | Operator::BrIf { relative_depth } => {
                branch(&mut frames, &mut next_headers, *relative_depth, &state);
            }
            Operator::BrTable { targets } => {
                let mut depths: Vec<u32> = targets.targets().filter_map(Result::ok).collect();
                depths.push(targets.default());
                for depth in depths {
                    branch(&mut frames, &mut next_headers, depth, &state);
                }
            }
            _ => {}
        }
        let ends_flow =
            matches!(op, Operator::Br { .. } | Operator::BrTable { .. } | Operator::Return | Operator::Unreachable)
                || is_return_call(op);
        if ends_flow {
            state = None;
        }

        stack.truncate(stack.len() - available);
        for k in 0..step.pushes {
            stack.push(read.unwrap_or_else(|| pushed(op, k, &fixed)));
        }
        // What follows a branch is unreachable: the block's values are gone.
        if ends_flow {
            stack.truncate(step.base);
        }
        debug_assert_eq!(stack.len(), step.height_after, "operand stack model at {op:?}");
        stack.resize(step.height_after, Tag::Clean);
    }
    if !to_demote.is_empty() {
        to_demote.sort_unstable();
        to_demote.dedup();
        return Pass::Demote(to_demote);
    }
    let settled = next_headers.iter().all(|(at, seen)| headers.get(at) == Some(seen));
    if settled { Pass::Settled(plan) } else { Pass::Widen(next_headers) }
}

/// A branch `depth` frames out carries `state` to that frame's end, or to
/// its loop's header.
fn branch(frames: &mut [Frame], headers: &mut HashMap<usize, Locals>, depth: u32, state: &Locals) {
    let Some(at) = frames.len().checked_sub(depth as usize + 1) else { return };
    let frame = &mut frames[at];
    match frame.loop_at {
        Some(header) => {
            let seen = headers.entry(header).or_insert(None);
            *seen = join(seen, state);
        }
        None => frame.at_end = join(&frame.at_end, state),
    }
}

fn has_nan_lane(bits: i128, lanes: Lanes) -> bool {
    let bytes = bits.to_le_bytes();
    match lanes {
        Lanes::F32 => bytes.chunks_exact(4).any(|b| f32::from_le_bytes(b.try_into().unwrap()).is_nan()),
        Lanes::F64 => bytes.chunks_exact(8).any(|b| f64::from_le_bytes(b.try_into().unwrap()).is_nan()),
    }
}

/// Whether `op` may read its operand at `depth` while that holds a float
/// result of `lanes` whose NaN bits are the CPU's.
fn accepts(op: &Operator<'_>, depth: usize, lanes: Lanes, demoted: &[u32]) -> bool {
    use Operator::*;
    if let Some(read) = super::lanes_read(op) {
        return read == lanes.encoded();
    }
    match op {
        Drop => true,
        // A local holds it as it is, unless reading it later could not tell
        // it from plain bits (a demoted local).
        LocalSet { local_index } | LocalTee { local_index } => !demoted.contains(local_index),
        // Comparisons and saturating conversions see only that a lane is NaN;
        // an extracted lane is a scalar float, canonicalised where it is stored.
        F32x4Eq
        | F32x4Ne
        | F32x4Lt
        | F32x4Gt
        | F32x4Le
        | F32x4Ge
        | F32x4ExtractLane { .. }
        | I32x4TruncSatF32x4S
        | I32x4TruncSatF32x4U => lanes == Lanes::F32,
        F64x2Eq
        | F64x2Ne
        | F64x2Lt
        | F64x2Gt
        | F64x2Le
        | F64x2Ge
        | F64x2ExtractLane { .. }
        | I32x4TruncSatF64x2SZero
        | I32x4TruncSatF64x2UZero => lanes == Lanes::F64,
        // The other lanes pass through as they are; the result keeps the tag.
        F32x4ReplaceLane { .. } => depth == 1 && lanes == Lanes::F32,
        F64x2ReplaceLane { .. } => depth == 1 && lanes == Lanes::F64,
        _ => false,
    }
}

/// The tag of the `k`-th value `op` pushes (other than a local's read),
/// given its operands' tags after any fix.
fn pushed(op: &Operator<'_>, k: usize, operands: &[Tag]) -> Tag {
    use Operator::*;
    if let Some(super::Fix::LanesAfter(lanes)) = super::fix_for(op) {
        return Tag::Dirty(if lanes == Lanes::F32.encoded() { Lanes::F32 } else { Lanes::F64 });
    }
    match op {
        V128Const { value } if k == 0 => Tag::Const(value.i128()),
        // A tee passes its operand on.
        LocalTee { .. } => operands[0],
        F32x4ReplaceLane { .. } | F64x2ReplaceLane { .. } => match operands.get(1) {
            Some(Tag::Dirty(l)) => Tag::Dirty(*l),
            _ => Tag::Clean,
        },
        _ => Tag::Clean,
    }
}
