// The whole frame through ONNX graphs, its pixels kept in the execution provider's memory
// between the steps (IoBinding): upload the u8 frame → unpack (tiles + a zeroed accumulator)
// → classifier (only the logits come back) → per branch run: select its tiles, the branch,
// accumulate its outputs → pack → download the u8 frame (into the output buffer itself when
// its rows are contiguous). Branch runs are padded to fixed batch
// buckets (powers of two up to max-batch) so the provider sees few distinct shapes; padding
// entries are spilled. With the CUDA provider every pixel operation runs on the GPU; on the
// CPU it gives exactly the CPU engine's frames (tested), which is how it is checked without
// a GPU.

use ort::memory::{AllocationDevice, AllocatorType, MemoryInfo, MemoryType};
use ort::session::Session;
use ort::value::{DynValue, Tensor, TensorRefMut};

use super::{route, Engine, FrameConfig, FrameStats, Image, ImageMut, Mode, PixelLayout, StageSeconds, TileGrid};
use crate::onnx::frame_graphs::{
    accumulate_graph, pack_graph, select_graph, unpack_graph, ACC, ACC_OUT, FRAME_INPUT, FRAME_OUTPUT, IDS, PICKED, SR,
    TILES,
};
use crate::onnx::to_bytes;
use crate::runtime::{self, ActiveDevice};
use crate::Error;

/// Frame size, stride, layouts and tiling the graphs were built for.
type Key = (usize, usize, usize, PixelLayout, PixelLayout, usize, usize);

/// The graph sessions of one frame geometry.
pub struct FrameGraphs {
    key: Key,
    grid: TileGrid,
    unpack: Session,
    select: Session,
    accumulate: Session,
    pack: Session,
}

fn rt(what: &str) -> impl Fn(ort::Error) -> Error + '_ {
    move |e| Error::Runtime(format!("{what}: {e}"))
}

/// Memory of the model's device (where intermediate tensors stay) and of the host.
fn memory(device: ActiveDevice) -> Result<(MemoryInfo<'static>, MemoryInfo<'static>), Error> {
    let host = MemoryInfo::new(AllocationDevice::CPU, 0, AllocatorType::Device, MemoryType::Default)
        .map_err(rt("host memory info"))?;
    let dev = match device {
        ActiveDevice::Cpu => MemoryInfo::new(AllocationDevice::CPU, 0, AllocatorType::Device, MemoryType::Default),
        ActiveDevice::Cuda(id) => {
            MemoryInfo::new(AllocationDevice::CUDA, id, AllocatorType::Device, MemoryType::Default)
        }
    }
    .map_err(rt("device memory info"))?;
    Ok((dev, host))
}

/// Runs `session` with `inputs` bound as they are and each output in `outputs` bound to the
/// memory given with it; returns the outputs in that order.
fn run_bound(
    session: &mut Session,
    what: &str,
    inputs: &[(&str, &DynValue)],
    outputs: &[(&str, &MemoryInfo)],
) -> Result<Vec<DynValue>, Error> {
    let err = rt(what);
    let mut binding = session.create_binding().map_err(&err)?;
    for (name, value) in inputs {
        binding.bind_input(*name, *value).map_err(&err)?;
    }
    for (name, mem) in outputs {
        binding.bind_output_to_device(*name, mem).map_err(&err)?;
    }
    let mut out = session.run_binding(&binding).map_err(&err)?;
    outputs
        .iter()
        .map(|(name, _)| {
            out.remove(*name)
                .ok_or_else(|| Error::Runtime(format!("{what}: no output '{name}'")))
        })
        .collect()
}

fn ids_value(ids: &[i64]) -> Result<DynValue, Error> {
    Ok(Tensor::from_array(([ids.len()], ids.to_vec()))
        .map_err(rt("tile ids"))?
        .into_dyn())
}

/// Whether the frame graphs can do a frame with these settings (else use `Engine::process`):
/// modes classsr, original and branchN, cache off or class, no alpha. The class cache is not
/// used (every tile is classified: a small part of a frame on a GPU, and the frame is the one
/// cache=off gives), nor QoS's last step, class 1 bicubic (QoS lowers the bias only).
pub fn supports(cfg: &FrameConfig, output: PixelLayout) -> Result<(), String> {
    if !matches!(cfg.mode, Mode::ClassSR | Mode::Original | Mode::Branch(_)) {
        return Err(format!("mode {} is not supported by the frame graphs", cfg.mode.name()));
    }
    if cfg.cache == super::CacheMode::Full {
        return Err("the frame graphs do not keep tiles across frames (cache=full)".into());
    }
    if output.alpha_offset().is_some() {
        return Err(format!(
            "{} has alpha, which the frame graphs do not carry",
            output.name()
        ));
    }
    Ok(())
}

/// The batch bucket of a run of `m` tiles: the next power of two, at most `max_batch`.
pub fn bucket(m: usize, max_batch: usize) -> usize {
    m.next_power_of_two().min(max_batch).max(m)
}

impl Engine {
    /// Upscales `input` into `output` through the frame graphs (see the module comment), for
    /// the frames [`supports`] accepts. After an error the graphs' sessions (and the device
    /// memory they hold) are dropped, and made again for the next frame.
    pub fn process_graphs(
        &mut self,
        cfg: &FrameConfig,
        input: &Image,
        output: &mut ImageMut,
    ) -> Result<FrameStats, Error> {
        let made = self.run_graphs(cfg, input, output);
        if made.is_err() {
            self.drop_graphs();
        }
        made
    }

    /// Drops the frame graphs' sessions (and the device memory they hold): after a failure
    /// (a panic too), or when the frames go another way. They are made again when needed.
    pub fn drop_graphs(&mut self) {
        self.graphs = None;
    }

    fn run_graphs(&mut self, cfg: &FrameConfig, input: &Image, output: &mut ImageMut) -> Result<FrameStats, Error> {
        let cfg = &cfg.for_model(&self.model.manifest);
        let started = std::time::Instant::now();
        Self::check_config(cfg)?;
        self.check_frames(input, output)?;
        let s = self.scale();
        supports(cfg, output.layout).map_err(Error::Settings)?;
        let fixed = match cfg.mode {
            Mode::Original => Some(2u8),
            Mode::Branch(b) => Some(b.min(2) as u8),
            _ => None,
        };
        let key = (
            input.width,
            input.height,
            input.stride,
            input.layout,
            output.layout,
            cfg.tile,
            cfg.overlap,
        );
        if self.graphs.as_ref().is_none_or(|g| g.key != key) {
            Self::check_frame_size(input.width, input.height, s)?;
            self.model.check_tile(cfg.tile)?;
            let grid = TileGrid::new(input.width, input.height, cfg.tile, cfg.overlap, s).map_err(Error::Settings)?;
            let [lo, hi] = self.model.manifest.value_range;
            let c = self.model.config;
            let session = |bytes: Vec<u8>, what: &str| runtime::session(&bytes, what, &c).map(|r| r.0);
            self.graphs = Some(FrameGraphs {
                key,
                unpack: session(
                    to_bytes(&unpack_graph(&grid, input.stride, input.layout, lo, hi)),
                    "unpack graph",
                )?,
                select: session(to_bytes(&select_graph(cfg.tile)), "select graph")?,
                accumulate: session(
                    to_bytes(&accumulate_graph(&grid, lo, hi, self.model.phases)),
                    "accumulate graph",
                )?,
                pack: session(
                    to_bytes(&pack_graph(&grid, output.layout).map_err(Error::Settings)?),
                    "pack graph",
                )?,
                grid,
            });
        }
        let g = self.graphs.as_mut().expect("built");
        let model = &mut self.model;
        let mut stages = StageSeconds::default();
        let mut lap = std::time::Instant::now();
        // seconds since the last call (since the start of the upload for the first)
        let mut split = || {
            let now = std::time::Instant::now();
            let dt = now.duration_since(lap).as_secs_f64();
            lap = now;
            dt
        };
        let (dev, host) = memory(model.device)?;
        let n = g.grid.len();
        // upload the frame as [height, stride], zero-filling a short last row
        let len = input.stride * input.height;
        let mut frame = input.data[..len.min(input.data.len())].to_vec();
        frame.resize(len, 0);
        let frame = Tensor::from_array(([input.height, input.stride], frame))
            .map_err(rt("frame"))?
            .into_dyn();
        let mut out = run_bound(
            &mut g.unpack,
            "unpack graph",
            &[(FRAME_INPUT, &frame)],
            &[(TILES, &dev), (ACC, &dev)],
        )?
        .into_iter();
        let (tiles, mut acc) = (out.next().expect("tiles"), out.next().expect("acc"));
        stages.upload = split();
        let costs = model.branch_macs(cfg.tile);
        let mut stats = FrameStats {
            width: input.width,
            height: input.height,
            original_macs: costs[2] * n as u64,
            ..Default::default()
        };
        let mut class_of = vec![fixed.unwrap_or(0); n];
        if fixed.is_none() {
            let info = &model.manifest.classifier;
            let logits = run_bound(
                &mut model.classifier,
                "classifier",
                &[(&info.input, &tiles)],
                &[(&info.output, &host)],
            )?;
            let (shape, logits) = logits[0].try_extract_tensor::<f32>().map_err(rt("classifier"))?;
            if shape[..] != [n as i64, 3] {
                return Err(Error::Model(format!(
                    "classifier returned shape {shape:?} for {n} tiles; expected [{n}, 3]"
                )));
            }
            stats.runs += 1;
            stats.macs += model.classifier_macs(cfg.tile) * n as u64;
            for (k, l) in logits.chunks_exact(3).enumerate() {
                class_of[k] = route(l, cfg.bias + cfg.qos_bias);
            }
            stages.classify = split();
        }
        // each branch on its tiles (class, then tile index; the fixed-point sum is order-free),
        // runs padded to their bucket (padding repeats the first tile and is spilled)
        for (class, cost) in costs.iter().enumerate() {
            let group: Vec<i64> = (0..n)
                .filter(|&i| class_of[i] as usize == class)
                .map(|i| i as i64)
                .collect();
            stats.tiles[class] = group.len();
            stats.macs += cost * group.len() as u64;
            let info = &model.manifest.branches[class];
            let max_batch = super::batch_limit(cfg, model.device);
            for chunk in group.chunks(max_batch) {
                let b = bucket(chunk.len(), max_batch);
                let mut picks = chunk.to_vec();
                picks.resize(b, chunk[0]);
                let picked = run_bound(
                    &mut g.select,
                    "select graph",
                    &[(TILES, &tiles), (IDS, &ids_value(&picks)?)],
                    &[(PICKED, &dev)],
                )?;
                let what = format!("branch{}", class + 1);
                let sr = run_bound(
                    &mut model.branches[class],
                    &what,
                    &[(&info.input, &picked[0])],
                    &[(&info.output, &dev)],
                )?;
                stages.branches[class] += split();
                let mut owners = chunk.to_vec();
                owners.resize(b, n as i64);
                acc = run_bound(
                    &mut g.accumulate,
                    "accumulate graph",
                    &[(ACC, &acc), (SR, &sr[0]), (IDS, &ids_value(&owners)?)],
                    &[(ACC_OUT, &dev)],
                )?
                .remove(0);
                stages.merge += split();
                stats.runs += 1;
            }
        }
        let row = output.width * output.layout.bytes_per_pixel();
        let len = row * output.height;
        if output.stride == row && output.data.len() >= len {
            // rows without padding: the frame is copied from the device straight into the
            // output (a copy of the whole HR frame less)
            let err = rt("pack graph");
            let view =
                TensorRefMut::from_array_view_mut(([output.height, row], &mut output.data[..len])).map_err(&err)?;
            let mut binding = g.pack.create_binding().map_err(&err)?;
            binding.bind_input(ACC, &acc).map_err(&err)?;
            binding.bind_output(FRAME_OUTPUT, view).map_err(&err)?;
            g.pack.run_binding(&binding).map_err(&err)?;
        } else {
            let frame = run_bound(&mut g.pack, "pack graph", &[(ACC, &acc)], &[(FRAME_OUTPUT, &host)])?;
            let (_, frame) = frame[0].try_extract_tensor::<u8>().map_err(rt("pack graph"))?;
            for (y, src) in frame.chunks_exact(row).enumerate().take(output.height) {
                output.data[y * output.stride..y * output.stride + row].copy_from_slice(src);
            }
        }
        stages.download = split();
        stats.classify_seconds = stages.classify;
        stats.stages = Some(stages);
        stats.seconds = started.elapsed().as_secs_f64();
        Ok(stats)
    }
}
