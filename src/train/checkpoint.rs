// Checkpoint files: named f32 tensors plus a JSON header of metadata, written atomically
// (temporary file + rename) so an interrupted write never corrupts the previous checkpoint.

use std::io::{Read, Write};
use std::path::Path;

use crate::onnx::{Tensor, Weights};

const MAGIC: &[u8; 8] = b"CSRCKPT1";

pub fn save(path: &Path, meta: &serde_json::Value, tensors: &Weights) -> Result<(), String> {
    let mut index = serde_json::Map::new();
    let mut offset = 0usize;
    for (name, t) in tensors {
        index.insert(
            name.clone(),
            serde_json::json!({ "shape": t.shape, "offset": offset, "len": t.data.len() }),
        );
        offset += t.data.len();
    }
    let header = serde_json::to_vec(&serde_json::json!({ "meta": meta, "tensors": index })).expect("json");
    let tmp = path.with_extension("tmp");
    let write = || -> std::io::Result<()> {
        let mut f = std::io::BufWriter::new(std::fs::File::create(&tmp)?);
        f.write_all(MAGIC)?;
        f.write_all(&(header.len() as u64).to_le_bytes())?;
        f.write_all(&header)?;
        for t in tensors.values() {
            for v in &t.data {
                f.write_all(&v.to_le_bytes())?;
            }
        }
        f.into_inner()?.sync_all()?;
        std::fs::rename(&tmp, path)
    };
    write().map_err(|e| format!("cannot write checkpoint '{}': {e}", path.display()))
}

/// The metadata of a checkpoint, without reading its tensors.
pub fn meta(path: &Path) -> Result<serde_json::Value, String> {
    let err = |e: String| format!("checkpoint '{}' is unreadable: {e}", path.display());
    let mut f = std::fs::File::open(path).map_err(|e| err(e.to_string()))?;
    let mut head = [0u8; 16];
    f.read_exact(&mut head).map_err(|e| err(e.to_string()))?;
    if &head[..8] != MAGIC {
        return Err(err("not a classsr-train checkpoint".into()));
    }
    let hlen = u64::from_le_bytes(head[8..16].try_into().unwrap()) as usize;
    let mut header = vec![0u8; hlen];
    f.read_exact(&mut header).map_err(|e| err(e.to_string()))?;
    let header: serde_json::Value = serde_json::from_slice(&header).map_err(|e| err(e.to_string()))?;
    Ok(header["meta"].clone())
}

pub fn load(path: &Path) -> Result<(serde_json::Value, Weights), String> {
    let err = |e: String| format!("checkpoint '{}' is unreadable: {e}", path.display());
    let mut f = std::fs::File::open(path).map_err(|e| err(e.to_string()))?;
    let mut bytes = Vec::new();
    f.read_to_end(&mut bytes).map_err(|e| err(e.to_string()))?;
    if bytes.len() < 16 || &bytes[..8] != MAGIC {
        return Err(err("not a classsr-train checkpoint".into()));
    }
    let hlen = u64::from_le_bytes(bytes[8..16].try_into().unwrap()) as usize;
    let header: serde_json::Value =
        serde_json::from_slice(bytes.get(16..16 + hlen).ok_or_else(|| err("truncated header".into()))?)
            .map_err(|e| err(e.to_string()))?;
    let data = &bytes[16 + hlen..];
    let mut tensors = Weights::new();
    for (name, info) in header["tensors"]
        .as_object()
        .ok_or_else(|| err("no tensor index".into()))?
    {
        let offset = info["offset"].as_u64().unwrap_or(0) as usize;
        let len = info["len"].as_u64().unwrap_or(0) as usize;
        let shape: Vec<usize> = serde_json::from_value(info["shape"].clone()).map_err(|e| err(e.to_string()))?;
        let raw = data
            .get(offset * 4..(offset + len) * 4)
            .ok_or_else(|| err(format!("'{name}' is truncated")))?;
        let values = raw
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
            .collect();
        tensors.insert(name.clone(), Tensor { shape, data: values });
    }
    Ok((header["meta"].clone(), tensors))
}
