"""The panel's steps as plain functions over a scene: render references, probe clips, prepare a job.

Operators are thin wrappers around these; the batch tools and scripts can call them directly.
"""

from __future__ import annotations

import os

import bpy

from ..backend.palette import mask_background
from . import connection, driving, jobs, paths, render
from .images import read_rgba_planes
from .spec import GenerateSettings, build_spec

PREVIEW_IMAGE = "SCAIL Reference"


class WorkflowError(Exception):
    """A step cannot run with the current settings; the message names what to fix."""


def reference_camera(scene) -> bpy.types.Object:
    return render.resolve_camera(scene, scene.scail.camera)


def reference_size(scene) -> tuple[int, int]:
    settings = scene.scail
    return render.target_size(scene, settings.size, settings.size_short_side)


def render_reference(scene) -> tuple[render.ReferenceRender, str | None]:
    """Render the reference (and its identity pass) into ``//scail/reference/``; update the preview."""
    settings = scene.scail
    root, warning = paths.scail_root()
    result = render.render_reference(
        scene, reference_camera(scene), settings.engine, reference_size(scene), os.path.join(root, "reference"),
        "reference", collection=settings.character_collection, identity_colours=settings.use_identity_colours)
    settings.reference_path = paths.to_blend_path(result.image_path)
    settings.reference_ids_path = paths.to_blend_path(result.identity_path) if result.identity_path else ""
    update_preview(result.image_path)
    return result, warning


def update_preview(path: str) -> None:
    image = bpy.data.images.get(PREVIEW_IMAGE)
    if image is None:
        image = bpy.data.images.load(path, check_existing=False)
        image.name = PREVIEW_IMAGE
    else:
        image.filepath = path
        image.reload()


def render_extra_views(scene) -> int:
    """Render every extra view that has a camera; return how many were rendered."""
    settings = scene.scail
    root, _warning = paths.scail_root()
    count = 0
    for index, view in enumerate(settings.extra_views):
        if view.camera is None:
            continue
        result = render.render_reference(
            scene, view.camera, settings.engine, reference_size(scene), os.path.join(root, "reference"),
            f"extra_{index + 1}", collection=settings.character_collection,
            identity_colours=settings.use_identity_colours)
        view.image_path = paths.to_blend_path(result.image_path)
        view.mask_path = paths.to_blend_path(result.identity_path) if result.identity_path else ""
        count += 1
    return count


def probe_driving(scene) -> driving.ClipInfo:
    settings = scene.scail
    info = driving.probe(scene, settings)
    settings.probed_fps, settings.probed_frames = info.fps, info.frames
    settings.probed_width, settings.probed_height = info.width, info.height
    settings.probed_source = info.path or "scene animation"
    return info


def prompt_text(settings) -> str:
    if settings.prompt_text is not None:
        return settings.prompt_text.as_string().strip()
    return settings.prompt.strip()


def _has_transparency(path: str) -> bool:
    _w, _h, planes = read_rgba_planes(path)
    return planes[3].count(255) != len(planes[3])


def _reference_inputs(scene, inputs: str, files: dict[str, str]) -> tuple[str, tuple[int, int]]:
    """Reference image and mask into ``files``; return the spec's ``reference_mask`` and the size."""
    settings = scene.scail
    background = mask_background(settings.mode, "reference")
    if settings.reference_source == "IMAGE":
        image_path = paths.absolute(settings.reference_image)
        if not os.path.isfile(image_path):
            raise WorkflowError(f"reference image not found: {image_path or '(no file chosen)'}")
        files["reference"] = image_path
        width, height, _planes = read_rgba_planes(image_path)
        short = render.SHORT_SIDES.get(settings.size) or render.round32(settings.size_short_side)
        size = (render.round32(short * width / height), short) if width >= height else \
            (short, render.round32(short * height / width))
        mask_path = paths.absolute(settings.reference_mask_image)
        if settings.reference_mask_image:
            if not os.path.isfile(mask_path):
                raise WorkflowError(f"reference mask not found: {mask_path}")
            files["reference_mask"] = mask_path
            return "file", size
        return ("alpha" if _has_transparency(image_path) else "auto"), size
    image_path = paths.absolute(settings.reference_path)
    if not os.path.isfile(image_path):
        render_reference(scene)
        image_path = paths.absolute(settings.reference_path)
    files["reference"] = image_path
    mask_path = os.path.join(inputs, "reference_mask.png")
    render.write_mask(image_path, paths.absolute(settings.reference_ids_path), background, mask_path)
    files["reference_mask"] = mask_path
    width, height, _planes = read_rgba_planes(image_path)
    return "file", (width, height)


def _extra_inputs(scene, inputs: str, files: dict[str, str]) -> None:
    settings = scene.scail
    background = mask_background(settings.mode, "reference")
    number = 0
    for view in settings.extra_views:
        image_path = paths.absolute(view.image_path)
        if not view.image_path:
            continue
        if not os.path.isfile(image_path):
            raise WorkflowError(f"extra view image not found: {image_path}; render the extra views again")
        number += 1
        mask_path = os.path.join(inputs, f"extra_reference_mask_{number}.png")
        render.write_mask(image_path, paths.absolute(view.mask_path), background, mask_path)
        files[f"extra_reference_{number}"] = image_path
        files[f"extra_reference_mask_{number}"] = mask_path


def _driving_inputs(scene, inputs: str, files: dict[str, str], size) -> tuple[str, tuple | None, float | None]:
    """Driving clip and mask into ``files``; return the spec's ``driving_mask``, ``frame_range`` and ``fps``."""
    settings = scene.scail
    source, mask_source = settings.driving_source, settings.driving_mask_source
    if mask_source == "RENDER" and source != "SCENE":
        raise WorkflowError("Mask: Render only exists for the scene's animation; pick Automatic, Clip Alpha "
                            "or Mask File")
    frame_range, fps, info = None, None, None
    if source == "SCENE":
        start, end = driving.scene_range(scene, settings)
        camera = render.resolve_camera(scene, settings.driving_camera)
        animation = render.render_animation(
            scene, camera, settings.engine, size, start, end, os.path.join(inputs, "driving"),
            collection=settings.character_collection, with_identity=(mask_source == "RENDER"))
        files["driving"] = os.path.join(inputs, "driving.zip")
        driving.zip_frames(animation.frames, files["driving"])
        fps = animation.fps
        if mask_source == "RENDER":
            files["driving_mask"] = os.path.join(inputs, "driving_mask.zip")
            driving.zip_flattened_masks(animation.identity_frames, mask_background(settings.mode, "driving"),
                                        files["driving_mask"])
    elif source == "SEQUENCE":
        info = driving.probe(scene, settings)
        start, end = driving.frame_range(info, settings)
        files["driving"] = os.path.join(inputs, "driving.zip")
        driving.zip_frames(driving.sequence_files(settings.driving_sequence)[start:end], files["driving"])
        fps = info.fps
    else:
        info = driving.probe(scene, settings)
        files["driving"] = info.path
        frame_range = driving.frame_range(info, settings)
        if frame_range == (0, info.frames):
            frame_range = None
    if mask_source == "FRAME":
        info = info or driving.probe(scene, settings)
        if source == "SCENE":
            info = driving.ClipInfo("", info.fps, len(animation.frames), size[0], size[1], "scene")
        files["driving_mask"] = os.path.join(inputs, "driving_mask.zip")
        driving.write_whole_frame_mask(info, files["driving_mask"])
    if mask_source == "FILE":
        mask_path = paths.absolute(settings.driving_mask_file)
        if not os.path.isfile(mask_path):
            raise WorkflowError(f"driving mask file not found: {mask_path or '(no file chosen)'}")
        files["driving_mask"] = mask_path
        if driving.is_image_sequence(mask_path):  # e.g. previewed masks, edited or not: sent as they are
            files["driving_mask"] = os.path.join(inputs, "driving_mask.zip")
            _zip_mask_sequence(scene, info, mask_path, files["driving_mask"])
    mask_mode = {"AUTO": "auto", "ALPHA": "alpha", "FILE": "file", "RENDER": "file", "FRAME": "file"}[mask_source]
    return mask_mode, frame_range, fps


def _zip_mask_sequence(scene, info: driving.ClipInfo | None, mask_path: str, out_path: str) -> None:
    """A mask PNG sequence (file number = clip frame, 1-based like In/Out) as the zip this job's driving needs.

    Video sources are sent whole with ``frame_range``, which the worker applies to the mask too, so the frames
    before In are padded; image sequences and scene renders are sent already cut to In/Out.
    """
    settings = scene.scail
    background = mask_background(settings.mode, "driving")
    if settings.driving_source == "SCENE":
        first, last = driving.scene_range(scene, settings)
        driving.zip_mask_sequence(mask_path, first, last, 0, background, out_path)
        return
    start, end = driving.frame_range(info, settings)
    padding = 0 if settings.driving_source == "SEQUENCE" else start
    driving.zip_mask_sequence(mask_path, start + 1, end, padding, background, out_path)


def prepare_job(scene, context=None, target: connection.BackendTarget | None = None
                ) -> tuple[object, jobs.JobTask, list[str]]:
    """Resolve the worker (unless ``target`` is given, e.g. by the batch), write every input under
    ``//scail/<job>/inputs/`` and add the job to the list."""
    settings = scene.scail
    target = target or connection.resolve_target(context)
    warnings: list[str] = []
    key = jobs.new_key()
    folder, warning = paths.job_dir(key)
    if warning:
        warnings.append(warning)
    inputs = os.path.join(folder, "inputs")
    os.makedirs(inputs, exist_ok=True)
    files: dict[str, str] = {}
    try:
        reference_mask, size = _reference_inputs(scene, inputs, files)
        _extra_inputs(scene, inputs, files)
        driving_mask, frame_range, fps = _driving_inputs(scene, inputs, files, size)
        spec = build_spec(GenerateSettings(
            mode=settings.mode, prompt=prompt_text(settings), negative_prompt=settings.negative_prompt,
            preset=settings.preset, size=size, steps=settings.steps, guidance=settings.guidance,
            shift=settings.shift, seed=settings.seed, loras=settings.loras,
            sampler="" if settings.sampler == "PRESET" else settings.sampler, frame_range=frame_range, fps=fps,
            reference_mask=reference_mask, driving_mask=driving_mask, mask_prompts=settings.mask_prompts,
            color_anchor=settings.color_anchor))
    except BaseException:
        import shutil

        shutil.rmtree(folder, ignore_errors=True)  # nothing half-written stays behind
        raise
    job = settings.jobs.add()
    job.key = key
    job.label = f"Job {len(settings.jobs)} · {settings.mode}"
    job.status = "uploading"
    job.server_url = target.server_key
    job.created = jobs.now_text()
    job.output_dir = paths.to_blend_path(folder)
    job.mode = settings.mode
    camera = settings.camera or scene.camera
    job.camera_name = camera.name if camera is not None else ""
    settings.job_index = len(settings.jobs) - 1
    task = jobs.JobTask(key, target, folder, spec=spec, files=files)
    jobs.save_submission(task)
    return job, task, warnings
