//! WGSL compute kernels on wgpu, inside the worker process.
//!
//! A shader is strangers' code for the GPU driver, the least hardened part of
//! a desktop. So: naga parses and validates it and its bindings are checked
//! against the task's layout before wgpu sees it; wgpu keeps its runtime
//! checks (bounds checks, loop bounding); buffers are capped by the task's
//! memory limit and the device's limits; a dispatch is split into slices of
//! about [`SLICE_TARGET`] so a pause (SIGSTOP of this process) or a timeout
//! lands between them; every wait has a stall limit. A driver that hangs or
//! loses the device cannot be recovered in-process (lavapipe blocks on the
//! next submit until the stuck work ends), so such a run tells the worker to
//! retire: the supervisor starts a fresh one.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use idlemesh_protocol::Sha256;
use idlemesh_protocol::wgsl::{Binding, WgslLayout};
use naga::{AddressSpace, ShaderStage, StorageAccess};

use crate::{Events, Outcome, RunLimits, Status};

/// The largest WGSL source accepted.
pub const MAX_SHADER_BYTES: usize = 1 << 20;
/// The most workgroups one task may dispatch in total.
pub const MAX_WORKGROUPS: u64 = 1 << 24;
/// How long one submission should take, so pauses land between them.
const SLICE_TARGET: Duration = Duration::from_millis(20);

/// A run's outcome, and whether the worker must exit afterwards because the
/// device can no longer be trusted (lost, or still busy past its stall limit).
#[derive(Debug)]
pub struct GpuRun {
    pub outcome: Outcome,
    pub retire: bool,
}

/// One GPU device for the worker's whole life, with the pipelines it built.
pub struct Gpu {
    adapter: String,
    device: wgpu::Device,
    queue: wgpu::Queue,
    limits: wgpu::Limits,
    lost: Arc<AtomicBool>,
    pipelines: HashMap<(Sha256, String), Prepared>,
}

impl std::fmt::Debug for Gpu {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gpu").field("adapter", &self.adapter).finish_non_exhaustive()
    }
}

struct Prepared {
    pipeline: wgpu::ComputePipeline,
    bind_layout: wgpu::BindGroupLayout,
    workgroup_size: [u32; 3],
    /// The fewest bytes each binding's WGSL type needs (a runtime-sized
    /// array counted with one element), by binding number.
    min_sizes: HashMap<u32, u64>,
}

/// The adapter's name as reported to users and pools: name, backend, type.
fn describe(info: &wgpu::AdapterInfo) -> String {
    format!("{} ({:?}, {:?})", info.name, info.backend, info.device_type)
}

/// Why there is no GPU to run WGSL kernels on.
#[derive(Debug, thiserror::Error)]
pub enum GpuError {
    #[error("no GPU adapter: {0}")]
    NoAdapter(#[from] wgpu::RequestAdapterError),
    #[error("could not open {adapter}: {source}")]
    NoDevice {
        adapter: String,
        #[source]
        source: wgpu::RequestDeviceError,
    },
}

/// Why a WGSL kernel is refused before it runs: the job owner's mistake,
/// named rather than left to fail inside the driver.
#[derive(Debug, thiserror::Error)]
enum ShaderError {
    #[error("shader of {0} bytes is over the cap of {MAX_SHADER_BYTES}")]
    TooLarge(usize),
    #[error("shader is not UTF-8 text: {0}")]
    NotUtf8(#[from] std::str::Utf8Error),
    /// naga's report, with the source lines it points at.
    #[error("WGSL does not parse: {0}")]
    Parse(String),
    #[error("WGSL does not validate: {0}")]
    Invalid(String),
    #[error("the shader has no entry point {0:?}")]
    NoEntryPoint(String),
    #[error("entry point {0:?} is not @compute")]
    NotCompute(String),
    #[error("@workgroup_size must be constant, not an override")]
    WorkgroupSizeOverride,
    #[error("cannot lay out the shader's types: {0}")]
    Layout(#[from] naga::proc::LayoutError),
    #[error("`{name}` is in @group({group}); kernels use only @group(0)")]
    Group { name: String, group: u32 },
    #[error("`{name}` at @binding({binding}) is not in the layout")]
    NotInLayout { name: String, binding: u32 },
    #[error("`{name}` at @binding({binding}) must be {want} for its role in the layout")]
    WrongRole { name: String, binding: u32, want: &'static str },
    #[error("the layout declares binding {0} but the shader has nothing at @binding({0})")]
    NothingAtBinding(u32),
    #[error("the GPU refused the shader: {0}")]
    Refused(wgpu::Error),
}

impl Gpu {
    /// Opens the best adapter there is. `WGPU_BACKEND` (e.g. `vulkan`) narrows
    /// the search, as in every wgpu program.
    pub fn open() -> Result<Self, GpuError> {
        let instance = wgpu::Instance::new(wgpu::InstanceDescriptor::new_without_display_handle_from_env());
        let adapter = pollster::block_on(instance.request_adapter(&wgpu::RequestAdapterOptions {
            power_preference: wgpu::PowerPreference::HighPerformance,
            ..Default::default()
        }))?;
        let info = adapter.get_info();
        // The adapter's own limits: tasks are checked against them below
        // rather than failing inside the driver.
        let limits = adapter.limits();
        let (device, queue) = pollster::block_on(adapter.request_device(&wgpu::DeviceDescriptor {
            label: Some("idlemesh"),
            required_limits: limits.clone(),
            memory_hints: wgpu::MemoryHints::MemoryUsage,
            ..Default::default()
        }))
        .map_err(|source| GpuError::NoDevice { adapter: describe(&info), source })?;
        let lost = Arc::new(AtomicBool::new(false));
        let flag = lost.clone();
        device.set_device_lost_callback(move |reason, message| {
            tracing::warn!(?reason, %message, "GPU device lost");
            flag.store(true, Ordering::SeqCst);
        });
        device.on_uncaptured_error(Arc::new(|e: wgpu::Error| tracing::warn!("GPU error: {e}")));
        Ok(Self { adapter: describe(&info), device, queue, limits, lost, pipelines: HashMap::new() })
    }

    pub fn adapter(&self) -> &str {
        &self.adapter
    }

    /// Runs one WGSL task. `stall` bounds each wait on the device: a single
    /// submission or readback taking longer means the GPU is stuck. The
    /// task's total time is the supervisor's to enforce, since only it knows
    /// how long the worker was frozen (paused, or by the duty cycle).
    #[allow(clippy::too_many_arguments, reason = "one task's parts, as the worker received them")]
    pub fn run(
        &mut self,
        sha256: Sha256,
        source: &[u8],
        layout: &WgslLayout,
        input: &[u8],
        params: &str,
        limits: &RunLimits,
        stall: Duration,
        events: &mut impl Events,
    ) -> GpuRun {
        let finish = |mut outcome: Outcome, retire: bool, adapter: &str| {
            outcome.adapter = Some(adapter.to_owned());
            GpuRun { outcome, retire }
        };
        if self.lost.load(Ordering::SeqCst) {
            return finish(Outcome::failed(Status::Error, "the GPU device was lost earlier"), true, &self.adapter);
        }
        let params: serde_json::Value = match serde_json::from_str(params) {
            Ok(v @ serde_json::Value::Object(_)) => v,
            Ok(_) => {
                return finish(Outcome::failed(Status::Error, "params must be a JSON object"), false, &self.adapter);
            }
            Err(e) => return finish(Outcome::failed(Status::Error, format!("params: {e}")), false, &self.adapter),
        };
        if let Err(e) = layout.check() {
            return finish(Outcome::failed(Status::InvalidKernel, e.to_string()), false, &self.adapter);
        }
        let key = (sha256, layout.entry_point.clone());
        if !self.pipelines.contains_key(&key) {
            match self.prepare(source, layout) {
                Ok(p) => {
                    self.pipelines.insert(key.clone(), p);
                }
                Err(e) => return finish(Outcome::failed(Status::InvalidKernel, e.to_string()), false, &self.adapter),
            }
        }
        let prepared = &self.pipelines[&key];
        let plan = match plan(layout, &params, input, limits, &self.limits, prepared.workgroup_size) {
            Ok(plan) => plan,
            Err((status, e)) => return finish(Outcome::failed(status, e), false, &self.adapter),
        };
        // A buffer smaller than the shader's type for it is the layout's
        // mistake: named here rather than refused by the driver at submit.
        for (b, &size) in layout.bindings.iter().zip(&plan.sizes) {
            if let Some(&need) = prepared.min_sizes.get(&b.binding())
                && size < need
            {
                let e = format!("binding {} is {size} bytes, but the shader's type for it needs {need}", b.binding());
                return finish(Outcome::failed(Status::Error, e), false, &self.adapter);
            }
        }
        let (outcome, retire) = match self.execute(&key, layout, &plan, input, stall, events) {
            Ok(outcome) => (outcome, false),
            Err(Failure::Timeout) => (
                Outcome::failed(Status::TimedOut, "a GPU submission did not finish within the task's time limit"),
                true,
            ),
            Err(Failure::Lost(why)) => (Outcome::failed(Status::Error, format!("GPU device lost: {why}")), true),
            Err(Failure::Device(e)) => (Outcome::failed(Status::Error, format!("GPU: {e}")), false),
            Err(Failure::OutOfMemory(e)) => (Outcome::failed(Status::OutOfMemory, format!("GPU: {e}")), false),
        };
        if retire {
            self.lost.store(true, Ordering::SeqCst);
        }
        finish(outcome, retire, &self.adapter)
    }

    /// Validates the shader with naga, matches its bindings to the layout and
    /// builds the pipeline with an explicit bind group layout.
    fn prepare(&self, source: &[u8], layout: &WgslLayout) -> Result<Prepared, ShaderError> {
        if source.len() > MAX_SHADER_BYTES {
            return Err(ShaderError::TooLarge(source.len()));
        }
        let source = std::str::from_utf8(source)?;
        let module = naga::front::wgsl::parse_str(source).map_err(|e| ShaderError::Parse(e.emit_to_string(source)))?;
        naga::valid::Validator::new(naga::valid::ValidationFlags::all(), naga::valid::Capabilities::empty())
            .validate(&module)
            .map_err(|e| ShaderError::Invalid(e.emit_to_string(source)))?;
        let entry = module
            .entry_points
            .iter()
            .find(|e| e.name == layout.entry_point)
            .ok_or_else(|| ShaderError::NoEntryPoint(layout.entry_point.clone()))?;
        if entry.stage != ShaderStage::Compute {
            return Err(ShaderError::NotCompute(layout.entry_point.clone()));
        }
        if entry.workgroup_size_overrides.is_some() {
            return Err(ShaderError::WorkgroupSizeOverride);
        }
        check_bindings(&module, layout)?;
        let min_sizes = min_binding_sizes(&module)?;

        let entries: Vec<_> = layout
            .bindings
            .iter()
            .map(|b| wgpu::BindGroupLayoutEntry {
                binding: b.binding(),
                visibility: wgpu::ShaderStages::COMPUTE,
                ty: wgpu::BindingType::Buffer {
                    ty: match b {
                        Binding::Input { .. } => wgpu::BufferBindingType::Storage { read_only: true },
                        Binding::Output { .. } | Binding::Scratch { .. } => {
                            wgpu::BufferBindingType::Storage { read_only: false }
                        }
                        Binding::Params { .. } | Binding::Dispatch { .. } => wgpu::BufferBindingType::Uniform,
                    },
                    has_dynamic_offset: false,
                    min_binding_size: min_sizes.get(&b.binding()).copied().and_then(std::num::NonZeroU64::new),
                },
                count: None,
            })
            .collect();
        let scope = self.device.push_error_scope(wgpu::ErrorFilter::Validation);
        let shader = self.device.create_shader_module(wgpu::ShaderModuleDescriptor {
            label: Some("kernel"),
            source: wgpu::ShaderSource::Wgsl(source.into()),
        });
        let bind_layout =
            self.device.create_bind_group_layout(&wgpu::BindGroupLayoutDescriptor { label: None, entries: &entries });
        let pipeline_layout = self.device.create_pipeline_layout(&wgpu::PipelineLayoutDescriptor {
            label: None,
            bind_group_layouts: &[Some(&bind_layout)],
            immediate_size: 0,
        });
        let pipeline = self.device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
            label: Some("kernel"),
            layout: Some(&pipeline_layout),
            module: &shader,
            entry_point: Some(&layout.entry_point),
            compilation_options: Default::default(),
            cache: None,
        });
        if let Some(e) = pollster::block_on(scope.pop()) {
            return Err(ShaderError::Refused(e));
        }
        Ok(Prepared { pipeline, bind_layout, workgroup_size: entry.workgroup_size, min_sizes })
    }

    fn execute(
        &self,
        key: &(Sha256, String),
        layout: &WgslLayout,
        plan: &Plan,
        input: &[u8],
        stall: Duration,
        events: &mut impl Events,
    ) -> Result<Outcome, Failure> {
        let prepared = &self.pipelines[key];
        let device = &self.device;
        let oom = device.push_error_scope(wgpu::ErrorFilter::OutOfMemory);
        let validation = device.push_error_scope(wgpu::ErrorFilter::Validation);
        let mut buffers = Vec::with_capacity(layout.bindings.len());
        let mut dispatch_buffer = None;
        let mut input_at = 0usize;
        for ((b, &size), &exact) in layout.bindings.iter().zip(&plan.sizes).zip(&plan.bytes) {
            let usage = match b {
                Binding::Input { .. } => wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_DST,
                Binding::Output { .. } => wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC,
                Binding::Scratch { .. } => wgpu::BufferUsages::STORAGE,
                Binding::Params { .. } | Binding::Dispatch { .. } => {
                    wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST
                }
            };
            let buffer =
                device.create_buffer(&wgpu::BufferDescriptor { label: None, size, usage, mapped_at_creation: false });
            match b {
                Binding::Input { .. } => {
                    // Exactly this binding's bytes; the padding stays zero.
                    let mut bytes = input[input_at..input_at + exact as usize].to_vec();
                    input_at += exact as usize;
                    bytes.resize(size as usize, 0);
                    self.queue.write_buffer(&buffer, 0, &bytes);
                }
                Binding::Params { fields, .. } => {
                    let bytes = WgslLayout::pack_params(fields, &plan.params).expect("packed once in plan");
                    self.queue.write_buffer(&buffer, 0, &bytes);
                }
                Binding::Dispatch { .. } => dispatch_buffer = Some(buffers.len()),
                Binding::Output { .. } | Binding::Scratch { .. } => {}
            }
            buffers.push(buffer);
        }
        let staging = device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("readback"),
            size: plan.output_bytes.max(4),
            usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        let entries: Vec<_> = layout
            .bindings
            .iter()
            .zip(&buffers)
            .map(|(b, buf)| wgpu::BindGroupEntry { binding: b.binding(), resource: buf.as_entire_binding() })
            .collect();
        let bind_group = device.create_bind_group(&wgpu::BindGroupDescriptor {
            label: None,
            layout: &prepared.bind_layout,
            entries: &entries,
        });
        if let Some(e) = pollster::block_on(validation.pop()) {
            return Err(Failure::Device(e.to_string()));
        }
        if let Some(e) = pollster::block_on(oom.pop()) {
            return Err(Failure::OutOfMemory(e.to_string()));
        }

        // Slice along the outermost dimension with more than one workgroup;
        // only a shader that reads its slice offset can be sliced.
        let groups = plan.workgroups;
        let axis = (0..3).rev().find(|&d| groups[d] > 1).unwrap_or(0);
        let total = groups[axis];
        let mut done = 0u32;
        let mut step = if dispatch_buffer.is_some() { 1 } else { total };
        let mut gpu_time = Duration::ZERO;
        while done < total {
            let count = step.min(total - done);
            if let Some(i) = dispatch_buffer {
                let mut offset = [0u32; 4];
                offset[axis] = done * prepared.workgroup_size[axis];
                let bytes: Vec<u8> = offset.iter().flat_map(|v| v.to_le_bytes()).collect();
                self.queue.write_buffer(&buffers[i], 0, &bytes);
            }
            let mut encoder = device.create_command_encoder(&wgpu::CommandEncoderDescriptor { label: None });
            {
                let mut pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor::default());
                pass.set_pipeline(&prepared.pipeline);
                pass.set_bind_group(0, &bind_group, &[]);
                let mut slice = groups;
                slice[axis] = count;
                pass.dispatch_workgroups(slice[0], slice[1], slice[2]);
            }
            let started = Instant::now();
            let index = self.queue.submit([encoder.finish()]);
            self.wait(index, stall)?;
            let took = started.elapsed();
            gpu_time += took;
            done += count;
            events.progress(done as f32 / total as f32);
            if dispatch_buffer.is_some() {
                // Grow or shrink the next slice towards the target duration.
                let per_unit = took.as_secs_f64() / f64::from(count);
                let want = (SLICE_TARGET.as_secs_f64() / per_unit.max(1e-9)).floor();
                step = (want as u32).clamp(1, total.max(1)).min(count.saturating_mul(4));
            }
        }

        if plan.output_bytes == 0 {
            return Ok(Outcome {
                peak_memory_bytes: plan.memory_bytes,
                gpu_ms: gpu_time.as_millis() as u64,
                error: None,
                ..Outcome::failed(Status::Ok, "")
            });
        }
        let mut encoder = device.create_command_encoder(&wgpu::CommandEncoderDescriptor { label: None });
        let mut at = 0;
        for ((b, buf), &exact) in layout.bindings.iter().zip(&buffers).zip(&plan.bytes) {
            // Output sizes are multiples of 4 (checked in `plan`); empty ones add nothing.
            if matches!(b, Binding::Output { .. }) && exact > 0 {
                encoder.copy_buffer_to_buffer(buf, 0, &staging, at, exact);
                at += exact;
            }
        }
        let index = self.queue.submit([encoder.finish()]);
        let (tx, rx) = std::sync::mpsc::channel();
        staging.map_async(wgpu::MapMode::Read, .., move |r| {
            let _ = tx.send(r);
        });
        self.wait(index, stall)?;
        match rx.try_recv() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(Failure::Device(format!("reading the output back: {e}"))),
            Err(_) => {
                // Mapping completes on a later poll than the copy's.
                self.wait_idle(stall)?;
                rx.try_recv()
                    .map_err(|_| Failure::Timeout)?
                    .map_err(|e| Failure::Device(format!("reading the output back: {e}")))?;
            }
        }
        let output = staging
            .get_mapped_range(..plan.output_bytes)
            .map_err(|e| Failure::Device(format!("reading the output back: {e}")))?
            .to_vec();
        staging.unmap();
        Ok(Outcome {
            output,
            peak_memory_bytes: plan.memory_bytes,
            gpu_ms: gpu_time.as_millis() as u64,
            error: None,
            ..Outcome::failed(Status::Ok, "")
        })
    }

    fn wait(&self, index: wgpu::SubmissionIndex, stall: Duration) -> Result<(), Failure> {
        let result = self.device.poll(wgpu::PollType::Wait { submission_index: Some(index), timeout: Some(stall) });
        self.judge(result)
    }

    fn wait_idle(&self, stall: Duration) -> Result<(), Failure> {
        let result = self.device.poll(wgpu::PollType::Wait { submission_index: None, timeout: Some(stall) });
        self.judge(result)
    }

    fn judge(&self, result: Result<wgpu::PollStatus, wgpu::PollError>) -> Result<(), Failure> {
        if self.lost.load(Ordering::SeqCst) {
            return Err(Failure::Lost("the driver reported it".into()));
        }
        match result {
            Ok(_) => Ok(()),
            Err(wgpu::PollError::Timeout) => Err(Failure::Timeout),
            // The submission was refused (a validation error found at submit,
            // such as a shader struct larger than its buffer): the task's
            // fault, and the device is fine.
            Err(e @ wgpu::PollError::WrongSubmissionIndex(..)) => {
                Err(Failure::Device(format!("the GPU refused the work ({e}); do the layout's sizes match the shader?")))
            }
        }
    }
}

enum Failure {
    Timeout,
    Lost(String),
    Device(String),
    OutOfMemory(String),
}

/// Sizes and counts of one task, all checked before anything is allocated.
#[derive(Debug)]
struct Plan {
    params: serde_json::Value,
    /// Per binding, in layout order: the buffer sizes (non-zero multiples of
    /// 4, as wgpu wants) and the bytes that are really the task's.
    sizes: Vec<u64>,
    bytes: Vec<u64>,
    workgroups: [u32; 3],
    output_bytes: u64,
    memory_bytes: u64,
}

fn plan(
    layout: &WgslLayout,
    params: &serde_json::Value,
    input: &[u8],
    limits: &RunLimits,
    device: &wgpu::Limits,
    workgroup_size: [u32; 3],
) -> Result<Plan, (Status, String)> {
    let bad = |e: String| (Status::Error, e);
    let align = |n: u64| n.div_ceil(4) * 4;
    let mut sizes = Vec::with_capacity(layout.bindings.len());
    let mut exact = Vec::with_capacity(layout.bindings.len());
    let mut input_left = input.len() as u64;
    let mut output_bytes = 0u64;
    for b in &layout.bindings {
        let size = match b {
            Binding::Input { size: Some(expr), .. } => {
                let n = expr.eval(params).map_err(|e| bad(e.to_string()))?;
                if n > input_left {
                    return Err(bad(format!(
                        "input binding {} wants {n} bytes but only {input_left} are left of the input",
                        b.binding()
                    )));
                }
                input_left -= n;
                n
            }
            Binding::Input { size: None, .. } => std::mem::take(&mut input_left),
            Binding::Output { size, .. } => {
                let n = size.eval(params).map_err(|e| bad(e.to_string()))?;
                if n % 4 != 0 {
                    return Err(bad(format!("output binding {} is {n} bytes, not a multiple of 4", b.binding())));
                }
                output_bytes = output_bytes.saturating_add(n);
                n
            }
            Binding::Scratch { size, .. } => size.eval(params).map_err(|e| bad(e.to_string()))?,
            Binding::Params { fields, .. } => {
                WgslLayout::pack_params(fields, params).map_err(|e| bad(e.to_string()))?.len() as u64
            }
            Binding::Dispatch { .. } => 16,
        };
        exact.push(size);
        // wgpu wants sizes that are non-zero multiples of 4.
        let size = align(size.max(4));
        let cap = match b {
            Binding::Params { .. } | Binding::Dispatch { .. } => device.max_uniform_buffer_binding_size,
            _ => device.max_storage_buffer_binding_size.min(device.max_buffer_size),
        };
        if size > cap {
            return Err((
                Status::OutOfMemory,
                format!("binding {} needs {size} bytes, over the device's limit of {cap}", b.binding()),
            ));
        }
        sizes.push(size);
    }
    if input_left > 0 {
        return Err(bad(format!("{input_left} bytes of the input are not bound to any input binding")));
    }
    // Outputs are read back through a staging copy: count them twice.
    let memory_bytes = sizes.iter().sum::<u64>() + output_bytes;
    if memory_bytes > limits.max_memory_bytes {
        return Err((
            Status::OutOfMemory,
            format!("buffers need {memory_bytes} bytes, over the memory limit of {}", limits.max_memory_bytes),
        ));
    }
    if output_bytes > limits.max_output_bytes {
        return Err((
            Status::Error,
            format!("output of {output_bytes} bytes exceeds the cap of {} bytes", limits.max_output_bytes),
        ));
    }
    let invocations = layout.invocations(params).map_err(|e| bad(e.to_string()))?;
    let mut workgroups = [1u32; 3];
    for d in 0..3 {
        let n = invocations[d].div_ceil(u64::from(workgroup_size[d].max(1)));
        if n > u64::from(device.max_compute_workgroups_per_dimension) {
            return Err(bad(format!(
                "{n} workgroups along {} is over the device's limit of {}",
                ["x", "y", "z"][d],
                device.max_compute_workgroups_per_dimension
            )));
        }
        workgroups[d] = n as u32;
    }
    let total: u64 = workgroups.iter().map(|&n| u64::from(n)).product();
    if total > MAX_WORKGROUPS {
        return Err(bad(format!("{total} workgroups is over the cap of {MAX_WORKGROUPS}")));
    }
    Ok(Plan { params: params.clone(), sizes, bytes: exact, workgroups, output_bytes, memory_bytes })
}

/// The byte size of each bound global's type, as WGSL lays it out.
fn min_binding_sizes(module: &naga::Module) -> Result<HashMap<u32, u64>, ShaderError> {
    let mut layouter = naga::proc::Layouter::default();
    layouter.update(module.to_ctx())?;
    Ok(module
        .global_variables
        .iter()
        .filter_map(|(_, var)| Some((var.binding.as_ref()?.binding, u64::from(layouter[var.ty].size))))
        .collect())
}

/// Every resource the shader declares must be in the layout with the same
/// role, and the other way round: a mismatch is the job owner's mistake and
/// is named, not left to fail inside the driver.
fn check_bindings(module: &naga::Module, layout: &WgslLayout) -> Result<(), ShaderError> {
    let mut declared: HashMap<u32, &Binding> = layout.bindings.iter().map(|b| (b.binding(), b)).collect();
    for (_, var) in module.global_variables.iter() {
        let Some(rb) = &var.binding else { continue };
        let name = var.name.as_deref().unwrap_or("?").to_owned();
        if rb.group != 0 {
            return Err(ShaderError::Group { name, group: rb.group });
        }
        let Some(b) = declared.remove(&rb.binding) else {
            return Err(ShaderError::NotInLayout { name, binding: rb.binding });
        };
        let ok = match (b, var.space) {
            (Binding::Input { .. }, AddressSpace::Storage { access }) => !access.contains(StorageAccess::STORE),
            (Binding::Output { .. } | Binding::Scratch { .. }, AddressSpace::Storage { access }) => {
                access.contains(StorageAccess::STORE)
            }
            (Binding::Params { .. } | Binding::Dispatch { .. }, AddressSpace::Uniform) => true,
            _ => false,
        };
        if !ok {
            let want = match b {
                Binding::Input { .. } => "var<storage, read>",
                Binding::Output { .. } | Binding::Scratch { .. } => "var<storage, read_write>",
                Binding::Params { .. } | Binding::Dispatch { .. } => "var<uniform>",
            };
            return Err(ShaderError::WrongRole { name, binding: rb.binding, want });
        }
    }
    if let Some(missing) = declared.keys().min() {
        return Err(ShaderError::NothingAtBinding(*missing));
    }
    Ok(())
}
