// The whole frame through ONNX graphs: unpack (u8 frame → tiles) → classifier → each branch on
// its class → merge (→ u8 frame), every step an ONNX Runtime session, so that with the CUDA
// provider every pixel operation can run on the device. On the CPU it gives exactly the CPU
// engine's frames (tested), which is how the graphs are checked without a GPU. Tensors still
// pass through host memory between the sessions; binding them to device memory (IoBinding)
// is the step that makes this path pay off on a GPU.

use ort::session::Session;
use ort::value::TensorRef;

use super::{route, Engine, FrameConfig, FrameStats, Image, ImageMut, Mode, PixelLayout, TileGrid};
use crate::onnx::frame_graphs::{merge_graph, unpack_graph, FRAME_OUTPUT, IDS_INPUT, SR_INPUT, TILES_OUTPUT};
use crate::onnx::to_bytes;
use crate::{runtime, Error};

/// Frame size, stride, layouts and tiling the graphs were built for.
type Key = (usize, usize, usize, PixelLayout, PixelLayout, usize, usize);

/// The unpack and merge sessions of one frame geometry.
pub struct FrameGraphs {
    key: Key,
    grid: TileGrid,
    unpack: Session,
    merge: Session,
    /// Branch outputs of the frame, in merge order, and their tile ids.
    sr: Vec<f32>,
    ids: Vec<i64>,
    frame: Vec<u8>,
}

fn rt(what: &str) -> impl Fn(ort::Error) -> Error + '_ {
    move |e| Error::Runtime(format!("{what}: {e}"))
}

impl Engine {
    /// Upscales `input` into `output` through the frame graphs (see the module comment).
    /// Supports the modes classsr, original and branchN without cache, QoS bicubic or alpha.
    pub fn process_graphs(
        &mut self,
        cfg: &FrameConfig,
        input: &Image,
        output: &mut ImageMut,
    ) -> Result<FrameStats, Error> {
        let started = std::time::Instant::now();
        input.check().map_err(Error::Input)?;
        output.check().map_err(Error::Input)?;
        let s = self.scale();
        if output.width != input.width * s || output.height != input.height * s {
            return Err(Error::Input(format!(
                "output {}x{} is not {s} times the input {}x{}",
                output.width, output.height, input.width, input.height
            )));
        }
        let fixed = match cfg.mode {
            Mode::ClassSR => None,
            Mode::Original => Some(2u8),
            Mode::Branch(b) => Some(b.min(2) as u8),
            m => {
                return Err(Error::Settings(format!(
                    "mode {} is not supported by the frame graphs",
                    m.name()
                )))
            }
        };
        if cfg.cache != super::CacheMode::Off || cfg.class1_bicubic || cfg.max_batch == 0 {
            return Err(Error::Settings(
                "the frame graphs run without cache and QoS degradation, with max-batch ≥ 1".into(),
            ));
        }
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
            Self::check_size(input.width, input.height)?;
            let grid = TileGrid::new(input.width, input.height, cfg.tile, cfg.overlap, s).map_err(Error::Settings)?;
            let [lo, hi] = self.model.manifest.value_range;
            let unpack = to_bytes(&unpack_graph(&grid, input.stride, input.layout, lo, hi));
            let merge = to_bytes(&merge_graph(&grid, output.layout, lo, hi).map_err(Error::Settings)?);
            let c = self.model.config;
            self.graphs = Some(FrameGraphs {
                key,
                unpack: runtime::session(&unpack, "unpack graph", &c)?.0,
                merge: runtime::session(&merge, "merge graph", &c)?.0,
                grid,
                sr: Vec::new(),
                ids: Vec::new(),
                frame: Vec::new(),
            });
        }
        let g = self.graphs.as_mut().expect("built");
        let model = &mut self.model;
        let (n, t, th) = (g.grid.len(), g.grid.tile, g.grid.tile * s);
        // the frame as [height, stride], zero-filling a short last row
        let len = input.stride * input.height;
        g.frame.clear();
        g.frame.extend_from_slice(&input.data[..len.min(input.data.len())]);
        g.frame.resize(len, 0);
        let frame = TensorRef::from_array_view(([input.height, input.stride], &g.frame[..])).map_err(rt("frame"))?;
        let out = g.unpack.run(ort::inputs![frame]).map_err(rt("unpack graph"))?;
        let (_, tiles) = out[TILES_OUTPUT]
            .try_extract_tensor::<f32>()
            .map_err(rt("unpack graph"))?;
        let costs = model.branch_macs(cfg.tile);
        let mut stats = FrameStats {
            width: input.width,
            height: input.height,
            original_macs: costs[2] * n as u64,
            ..Default::default()
        };
        let mut class_of = vec![fixed.unwrap_or(0); n];
        if fixed.is_none() {
            let mut logits = Vec::new();
            model.run_classifier(tiles, n, t, &mut logits)?;
            stats.runs += 1;
            stats.macs += model.classifier_macs(cfg.tile) * n as u64;
            for (k, l) in logits.chunks_exact(3).enumerate() {
                class_of[k] = route(l, cfg.bias);
            }
        }
        // each branch on its tiles, in the CPU engine's merge order (class, then tile index)
        let (item, out_item) = (3 * t * t, 3 * th * th);
        g.sr.clear();
        g.ids.clear();
        let mut staging = Vec::new();
        for class in 0..3u8 {
            let group: Vec<usize> = (0..n).filter(|&i| class_of[i] == class).collect();
            stats.tiles[class as usize] = group.len();
            stats.macs += costs[class as usize] * group.len() as u64;
            for chunk in group.chunks(cfg.max_batch) {
                staging.clear();
                for &i in chunk {
                    staging.extend_from_slice(&tiles[i * item..(i + 1) * item]);
                }
                let c = class as usize;
                let what = format!("branch{}", c + 1);
                let name = &model.manifest.branches[c].output;
                super::model::run_with(
                    &mut model.branches[c],
                    name,
                    &staging,
                    (chunk.len(), t),
                    &what,
                    |_, data| {
                        if data.len() != chunk.len() * out_item {
                            return Err(Error::Model(format!(
                                "{what} returned {} values for {} tiles",
                                data.len(),
                                chunk.len()
                            )));
                        }
                        g.sr.extend_from_slice(data);
                        Ok(())
                    },
                )?;
                g.ids.extend(chunk.iter().map(|&i| i as i64));
                stats.runs += 1;
            }
        }
        drop(out);
        let m = g.ids.len();
        let sr = TensorRef::from_array_view(([m, 3, th, th], &g.sr[..])).map_err(rt("branch outputs"))?;
        let ids = TensorRef::from_array_view(([m], &g.ids[..])).map_err(rt("tile ids"))?;
        let out = g
            .merge
            .run(ort::inputs![SR_INPUT => sr, IDS_INPUT => ids])
            .map_err(rt("merge graph"))?;
        let (_, frame) = out[FRAME_OUTPUT]
            .try_extract_tensor::<u8>()
            .map_err(rt("merge graph"))?;
        let row = output.width * output.layout.bytes_per_pixel();
        for (y, src) in frame.chunks_exact(row).enumerate().take(output.height) {
            output.data[y * output.stride..y * output.stride + row].copy_from_slice(src);
        }
        stats.seconds = started.elapsed().as_secs_f64();
        Ok(stats)
    }
}
