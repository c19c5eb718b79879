"""Per-scene settings and the job list, stored in the .blend as ``Scene.scail``; a character's identity colour as
``Object.scail_identity``."""

from __future__ import annotations

import bpy
from bpy.props import (
    BoolProperty,
    CollectionProperty,
    EnumProperty,
    FloatProperty,
    IntProperty,
    PointerProperty,
    StringProperty,
)

from .compat import path_options
from .identities import AUTO, IDENTITY_ITEMS

_PATH = path_options()

JOB_STATUSES = ("preparing", "uploading", "queued", "running", "downloading", "succeeded", "failed", "canceled",
                "disconnected")
ACTIVE_STATUSES = frozenset({"preparing", "uploading", "queued", "running", "downloading"})

# Shared with the shots (``shots.py``), so a shot offers exactly the panel's modes and presets.
MODES = [
    ("animation", "Animate", "The reference character performs the driving motion"),
    ("replacement", "Replace", "The reference character replaces the subject in the driving clip"),
]
PRESETS = [
    ("fast", "Fast", "Few steps with the distillation LoRA"),
    ("balanced", "Balanced", "A middle ground"),
    ("quality", "Quality", "Full sampling"),
]
COLOR_ANCHORS = [
    ("AUTO", "Auto", "Anchor colours when the clip needs more than one window (more than 81 frames)"),
    ("ON", "On", "Match each later window's colours to the first window's, against colour drift on long clips"),
    ("OFF", "Off", "Keep every window's colours as generated"),
]


def _is_camera(_self, obj: bpy.types.Object) -> bool:
    return obj.type == "CAMERA"


class SCAIL_PG_extra_view(bpy.types.PropertyGroup):
    """One more view of the character: a camera to render from, or an image (and mask) from disk."""

    camera: PointerProperty(name="Camera", type=bpy.types.Object, poll=_is_camera)
    image_path: StringProperty(name="Image", subtype="FILE_PATH", options=_PATH, description="Rendered or external view")
    mask_path: StringProperty(name="Mask", subtype="FILE_PATH", options=_PATH, description="Identity mask (RGBA, transparent background)")


class SCAIL_PG_job(bpy.types.PropertyGroup):
    """A generation job of this file; enough to find it again on the worker after reopening the file."""

    key: StringProperty(name="Key", description="Local id: the output folder name and the Idempotency-Key")
    job_id: StringProperty(name="Job ID")
    server_url: StringProperty(name="Server")
    label: StringProperty(name="Label")
    status: StringProperty(name="Status", default="preparing")
    phase: StringProperty(name="Phase")
    message: StringProperty(name="Message")
    progress: FloatProperty(name="Progress", min=0.0, max=1.0, subtype="FACTOR")
    window: IntProperty(name="Window")
    num_windows: IntProperty(name="Windows")
    step: IntProperty(name="Step")
    num_steps: IntProperty(name="Steps")
    eta_seconds: FloatProperty(name="ETA", default=-1.0)
    created: StringProperty(name="Created")
    output_dir: StringProperty(name="Output", subtype="DIR_PATH", options=_PATH)
    frame_count: IntProperty(name="Frames")
    fps: FloatProperty(name="FPS")
    mode: StringProperty(name="Mode")
    camera_name: StringProperty(name="Camera")
    imported: BoolProperty(name="Imported")


class SCAIL_PG_settings(bpy.types.PropertyGroup):
    # Reference
    reference_source: EnumProperty(
        name="Reference",
        items=[
            ("RENDER", "Render", "Render the character from a camera with a transparent film"),
            ("IMAGE", "Image", "Use an image (and optionally a mask) from disk"),
        ],
        default="RENDER",
    )
    camera: PointerProperty(name="Camera", type=bpy.types.Object, poll=_is_camera,
                            description="Camera to render from; empty uses the scene camera")
    engine: EnumProperty(
        name="Engine",
        items=[
            ("WORKBENCH", "Workbench", "Fast preview shading"),
            ("EEVEE", "EEVEE", "Real-time renderer"),
            ("CYCLES", "Cycles", "Path tracer"),
            ("SCENE", "Scene", "The scene's own render engine and settings"),
        ],
        default="WORKBENCH",
    )
    size: EnumProperty(
        name="Size",
        items=[
            ("512p", "512p", "Short side 512, long side from the camera aspect (SCAIL-2 default)"),
            ("704p", "704p", "Short side 704: better for replacement and pose-driven clips"),
            ("CUSTOM", "Custom", "Short side set below (multiple of 32), e.g. small sizes for quick tests"),
        ],
        default="512p",
    )
    size_short_side: IntProperty(name="Short Side", default=256, min=64, max=1280, step=32,
                                 description="Short side in pixels, rounded to a multiple of 32")
    character_collection: PointerProperty(
        name="Characters", type=bpy.types.Collection,
        description="Each top-level object in this collection is one character with its own identity colour; "
                    "empty: everything visible is one character",
    )
    use_identity_colours: BoolProperty(
        name="Identity Colours", default=True,
        description="Render an exact multi-character mask with one palette colour per character",
    )
    reference_image: StringProperty(name="Image", subtype="FILE_PATH", options=_PATH)
    reference_mask_image: StringProperty(name="Mask", subtype="FILE_PATH", options=_PATH,
                                         description="Optional mask; empty uses the image's alpha, else automatic")
    reference_path: StringProperty(name="Reference", subtype="FILE_PATH", options=_PATH, description="Last rendered reference")
    reference_ids_path: StringProperty(name="Identity Pass", subtype="FILE_PATH", options=_PATH)
    extra_views: CollectionProperty(type=SCAIL_PG_extra_view)
    extra_view_index: IntProperty(name="Extra View")

    # Driving
    driving_source: EnumProperty(
        name="Driving",
        items=[
            ("FILE", "Video File", "A video file on disk"),
            ("MOVIECLIP", "Movie Clip", "A Movie Clip datablock"),
            ("STRIP", "VSE Strip", "A movie strip in the Video Sequencer"),
            ("SEQUENCE", "Image Sequence", "Numbered images in a folder"),
            ("SCENE", "Scene Animation", "Render this scene's animation from a camera, with exact identity masks"),
        ],
        default="FILE",
    )
    driving_file: StringProperty(name="Video", subtype="FILE_PATH", options=_PATH)
    driving_clip: PointerProperty(name="Clip", type=bpy.types.MovieClip)
    driving_strip: StringProperty(name="Strip", description="Name of a movie strip in the Video Sequencer")
    driving_sequence: StringProperty(name="First Image", subtype="FILE_PATH", options=_PATH,
                                     description="First image of a numbered sequence")
    driving_sequence_fps: FloatProperty(name="FPS", default=24.0, min=1.0, max=240.0)
    driving_camera: PointerProperty(name="Camera", type=bpy.types.Object, poll=_is_camera,
                                    description="Camera for the scene's animation; empty uses the scene camera")
    driving_frame_in: IntProperty(name="In", default=1, min=1, description="First frame of the clip to use (1-based)")
    driving_frame_out: IntProperty(name="Out", default=0, min=0,
                                   description="Last frame to use (inclusive); 0 uses the whole clip")
    driving_mask_source: EnumProperty(
        name="Mask",
        items=[
            ("AUTO", "Automatic", "The server segments the subjects"),
            ("ALPHA", "Clip Alpha", "The clip's own alpha channel"),
            ("FILE", "Mask File", "A mask video, or a numbered PNG sequence (e.g. previewed masks), in palette colours"),
            ("RENDER", "Render", "Exact identity masks rendered from the scene (scene animation only)"),
            ("FRAME", "Whole Frame", "The subject fills every frame (close-ups, when no other mask is available)"),
        ],
        default="AUTO",
    )
    driving_mask_file: StringProperty(
        name="Mask File", subtype="FILE_PATH", options=_PATH,
        description="A mask video, or one PNG of a mask sequence whose file numbers are the clip frames (1-based, "
                    "like In/Out)",
    )
    mask_prompts: StringProperty(
        name="Mask Prompts", default="person, character",
        description="What automatic masks look for (SAM3 text prompts, comma-separated), e.g. \"person, cat, bear\"",
    )
    mask_preview_to_vse: BoolProperty(name="Mask Strip", default=False,
                                      description="Also show previewed driving masks as a Sequencer strip")
    mask_preview_status: StringProperty(name="Mask Preview", description="'', running, done or failed")
    mask_preview_message: StringProperty(name="Mask Preview Message")
    mask_preview_dir: StringProperty(name="Mask Folder", subtype="DIR_PATH", options=_PATH,
                                     description="Folder of the last previewed masks")
    probed_fps: FloatProperty(name="FPS")
    probed_frames: IntProperty(name="Frames")
    probed_width: IntProperty(name="Width")
    probed_height: IntProperty(name="Height")
    probed_source: StringProperty(name="Probed", description="What the probe values describe")

    # Generate
    mode: EnumProperty(name="Mode", items=MODES, default="animation")
    prompt: StringProperty(name="Prompt", default="a character moving naturally")
    prompt_text: PointerProperty(name="Prompt Text", type=bpy.types.Text,
                                 description="A Text datablock for long prompts; overrides the field")
    negative_prompt: StringProperty(name="Negative")
    preset: EnumProperty(name="Preset", items=PRESETS, default="fast")
    show_advanced: BoolProperty(name="Advanced", default=False)
    steps: IntProperty(name="Steps", default=0, min=0, max=200, description="0 uses the preset")
    guidance: FloatProperty(name="Guidance", default=0.0, min=0.0, max=30.0, description="0 uses the preset")
    shift: FloatProperty(name="Shift", default=0.0, min=0.0, max=30.0, description="0 uses the preset")
    seed: IntProperty(name="Seed", default=-1, min=-1, description="-1 lets the worker choose")
    sampler: EnumProperty(
        name="Sampler",
        items=[
            ("PRESET", "Preset", "The preset's sampler"),
            ("unipc", "UniPC", "UniPC multistep"),
            ("dpm++", "DPM++", "DPM-Solver++"),
            ("euler", "Euler", "Flow-matching Euler"),
        ],
        default="PRESET",
    )
    loras: StringProperty(name="LoRAs", description='Strength overrides, e.g. "lightx2v=0.8, dpo=1.0"')
    step_cache: EnumProperty(
        name="Step Cache",
        items=[
            ("AUTO", "Auto", "The worker's default: TaylorSeer when a window has 20 or more steps (Quality), off "
             "below"),
            ("off", "Off", "Run every denoising step in full"),
            ("taylorseer", "TaylorSeer", "Compute 15 of 40 steps, extrapolate the others (about 2.6x faster)"),
            ("first_block", "First Block", "Skip a step when the first block barely changes (speed-up varies)"),
        ],
        default="AUTO",
        description="Skip denoising steps of many-step sampling (Quality preset) by reusing earlier ones",
    )
    color_anchor: EnumProperty(name="Colour Anchor", items=COLOR_ANCHORS, default="AUTO",
                               description="Keep colours from drifting between the windows of a long clip")

    # Output
    output_to_vse: BoolProperty(name="Sequencer Strip", default=True)
    vse_channel: IntProperty(name="Channel", default=2, min=1, max=128)
    vse_frame_start: IntProperty(name="Start Frame", default=1)
    set_scene_fps: BoolProperty(name="Set Scene FPS", default=True,
                                description="Match the scene frame rate to the result")
    output_to_camera: BoolProperty(name="Camera Background", default=True)

    # Jobs
    jobs: CollectionProperty(type=SCAIL_PG_job)
    job_index: IntProperty(name="Job")


classes = (SCAIL_PG_extra_view, SCAIL_PG_job, SCAIL_PG_settings)


def register() -> None:
    for cls in classes:
        bpy.utils.register_class(cls)
    bpy.types.Scene.scail = PointerProperty(type=SCAIL_PG_settings)
    bpy.types.Object.scail_identity = EnumProperty(
        name="SCAIL Identity", items=IDENTITY_ITEMS, default=AUTO,
        description="Identity colour of this character (a top-level object of the Characters collection) in every "
                    "SCAIL mask made from the scene: the reference, the extra views and the driving frames",
    )


def unregister() -> None:
    del bpy.types.Object.scail_identity
    del bpy.types.Scene.scail
    for cls in reversed(classes):
        bpy.utils.unregister_class(cls)
