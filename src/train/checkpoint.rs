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
    crate::files::write_atomically(path, |f| {
        f.write_all(MAGIC)?;
        f.write_all(&(header.len() as u64).to_le_bytes())?;
        f.write_all(&header)?;
        for t in tensors.values() {
            for v in &t.data {
                f.write_all(&v.to_le_bytes())?;
            }
        }
        Ok(())
    })
    .map_err(|e| format!("cannot write checkpoint '{}': {e}", path.display()))
}

/// Opens a checkpoint and reads its JSON header; the file is left at the tensor data.
fn open(path: &Path) -> Result<(std::fs::File, serde_json::Value), String> {
    let err = |e: String| format!("checkpoint '{}' is unreadable: {e}", path.display());
    let mut f = std::fs::File::open(path).map_err(|e| err(e.to_string()))?;
    let mut head = [0u8; 16];
    if f.read_exact(&mut head).is_err() || &head[..8] != MAGIC {
        return Err(err("not a classsr-train checkpoint".into()));
    }
    let hlen = u64::from_le_bytes(head[8..16].try_into().unwrap()) as usize;
    let mut header = Vec::new();
    Read::by_ref(&mut f)
        .take(hlen as u64)
        .read_to_end(&mut header)
        .map_err(|e| err(e.to_string()))?;
    if header.len() < hlen {
        return Err(err("truncated header".into()));
    }
    let header = serde_json::from_slice(&header).map_err(|e| err(e.to_string()))?;
    Ok((f, header))
}

/// The metadata of a checkpoint, without reading its tensors.
pub fn meta(path: &Path) -> Result<serde_json::Value, String> {
    open(path).map(|(_, header)| header["meta"].clone())
}

pub fn load(path: &Path) -> Result<(serde_json::Value, Weights), String> {
    let err = |e: String| format!("checkpoint '{}' is unreadable: {e}", path.display());
    let (mut f, header) = open(path)?;
    let mut data = Vec::new();
    f.read_to_end(&mut data).map_err(|e| err(e.to_string()))?;
    let mut tensors = Weights::new();
    for (name, info) in header["tensors"]
        .as_object()
        .ok_or_else(|| err("no tensor index".into()))?
    {
        let offset = info["offset"].as_u64().unwrap_or(0) as usize;
        let len = info["len"].as_u64().unwrap_or(0) as usize;
        let shape: Vec<usize> = serde_json::from_value(info["shape"].clone()).map_err(|e| err(e.to_string()))?;
        if shape.iter().try_fold(1usize, |n, &d| n.checked_mul(d)) != Some(len) {
            return Err(err(format!("'{name}' holds {len} values for the shape {shape:?}")));
        }
        let raw = offset
            .checked_add(len)
            .and_then(|end| end.checked_mul(4))
            .and_then(|end| data.get(offset * 4..end))
            .ok_or_else(|| err(format!("'{name}' is truncated")))?;
        let values = raw
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
            .collect();
        tensors.insert(name.clone(), Tensor { shape, data: values });
    }
    Ok((header["meta"].clone(), tensors))
}
