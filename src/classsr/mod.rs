// The `classsr` element: registration and the public enums of its properties.
//
// Example pipeline:
//
//   gst-launch-1.0 videotestsrc ! video/x-raw,width=320,height=240 ! classsr ! videoconvert ! autovideosink
//
// Upscales every frame ×4 (the model's scale): the frame is cut into overlapping 32×32 tiles,
// a small classifier scores every tile in one batch, each tile goes to one of three
// branches of decreasing cost, and the HR tiles are blended back together.

use gst::glib;
use gst::prelude::*;

mod caps;
mod imp;

glib::wrapper! {
    pub struct ClassSr(ObjectSubclass<imp::ClassSr>) @extends gst_video::VideoFilter, gst_base::BaseTransform, gst::Element, gst::Object;
}

/// The `mode` property.
#[derive(Debug, Eq, PartialEq, Ord, PartialOrd, Hash, Clone, Copy, Default, glib::Enum)]
#[repr(u32)]
#[enum_type(name = "GstClassSrMode")]
pub enum ClassSrMode {
    #[default]
    #[enum_value(name = "ClassSR: the classifier routes each tile to a branch", nick = "classsr")]
    ClassSr,
    #[enum_value(name = "Original: the largest branch on every tile", nick = "original")]
    Original,
    #[enum_value(name = "Bicubic: no network", nick = "bicubic")]
    Bicubic,
    #[enum_value(name = "Branch 1 (cheapest) on every tile", nick = "branch1")]
    Branch1,
    #[enum_value(name = "Branch 2 on every tile", nick = "branch2")]
    Branch2,
    #[enum_value(name = "Branch 3 (largest) on every tile", nick = "branch3")]
    Branch3,
    #[enum_value(
        name = "Class map: bicubic tinted by each tile's class (debug view)",
        nick = "classmap"
    )]
    ClassMap,
}

/// The `cache` property.
#[derive(Debug, Eq, PartialEq, Ord, PartialOrd, Hash, Clone, Copy, Default, glib::Enum)]
#[repr(u32)]
#[enum_type(name = "GstClassSrCache")]
pub enum ClassSrCache {
    #[enum_value(name = "Off: recompute every tile of every frame", nick = "off")]
    Off,
    #[default]
    #[enum_value(name = "Class: unchanged tiles keep their class", nick = "class")]
    Class,
    #[enum_value(name = "Full: unchanged tiles keep their class and HR output", nick = "full")]
    Full,
}

/// The `device` property.
#[derive(Debug, Eq, PartialEq, Ord, PartialOrd, Hash, Clone, Copy, Default, glib::Enum)]
#[repr(u32)]
#[enum_type(name = "GstClassSrDevice")]
pub enum ClassSrDevice {
    #[default]
    #[enum_value(name = "Auto: CUDA when its provider registers, else CPU", nick = "auto")]
    Auto,
    #[enum_value(name = "CPU", nick = "cpu")]
    Cpu,
    #[enum_value(name = "CUDA (fails if the provider does not register)", nick = "cuda")]
    Cuda,
}

/// The `frame-graphs` property.
#[derive(Debug, Eq, PartialEq, Ord, PartialOrd, Hash, Clone, Copy, Default, glib::Enum)]
#[repr(u32)]
#[enum_type(name = "GstClassSrFrameGraphs")]
pub enum ClassSrFrameGraphs {
    #[default]
    #[enum_value(name = "Auto: on when the model runs on CUDA, off on the CPU", nick = "auto")]
    Auto,
    #[enum_value(name = "On: whole frames as ONNX graphs kept on the device", nick = "on")]
    On,
    #[enum_value(name = "Off: tiles merged on the CPU", nick = "off")]
    Off,
}

/// The `precision` property.
#[derive(Debug, Eq, PartialEq, Ord, PartialOrd, Hash, Clone, Copy, Default, glib::Enum)]
#[repr(u32)]
#[enum_type(name = "GstClassSrPrecision")]
pub enum ClassSrPrecision {
    #[default]
    #[enum_value(name = "FP32: the branches in float", nick = "fp32")]
    Fp32,
    #[enum_value(name = "FP16: the branches in float16 (for GPUs)", nick = "fp16")]
    Fp16,
}

pub fn register(plugin: &gst::Plugin) -> Result<(), glib::BoolError> {
    gst::Element::register(Some(plugin), "classsr", gst::Rank::NONE, ClassSr::static_type())
}
