"""The panel's steps as plain functions over a scene: render references, probe clips, prepare a job.

Operators are thin wrappers around these; the batch tools and scripts can call them directly.
"""

from __future__ import annotations

import os

import bpy

from ..backend.palette import mask_background
from . import connection, driving, identities, jobs, paths, pngio, render
from .identities import Character
from .images import read_rgba_planes
from .spec import GenerateSettings, build_spec

PREVIEW_IMAGE = "SCAIL Reference"
IDENTITIES_FILE = "identities.json"


class WorkflowError(Exception):
    """A step cannot run with the current settings; the message names what to fix."""


def reference_camera(scene) -> bpy.types.Object:
    return render.resolve_camera(scene, scene.scail.camera)


def reference_size(scene) -> tuple[int, int]:
    settings = scene.scail
    return render.target_size(scene, settings.size, settings.size_short_side)


def uses_identity_colours(scene) -> bool:
    """Whether masks made from the scene tell characters apart (a Characters collection, Identity Colours on)."""
    settings = scene.scail
    return settings.character_collection is not None and settings.use_identity_colours


def ordering_camera(scene) -> bpy.types.Object:
    """The camera that orders Auto characters left to right: the reference camera, else the driving camera."""
    settings = scene.scail
    camera = settings.camera or scene.camera or settings.driving_camera
    return render.resolve_camera(scene, camera)


def reference_legend(scene) -> identities.Legend | None:
    """The colours the rendered reference's identity pass was made with (None without one)."""
    settings = scene.scail
    if settings.reference_source != "RENDER" or not settings.reference_ids_path:
        return None
    return identities.read_legend(paths.absolute(settings.reference_ids_path))


def job_characters(scene) -> list[Character]:
    """The characters of a job with their colours, the same for the reference, every extra view and every driving
    frame: as recorded with the rendered reference, with explicit colours and new characters added (see
    ``identities``). With Identity Colours off (or no collection) everything is one identity."""
    settings = scene.scail
    if not uses_identity_colours(scene):
        return identities.single_identity(scene, settings.character_collection)
    legend = reference_legend(scene)
    return identities.resolve(scene, settings.character_collection, ordering_camera(scene),
                              legend.colours if legend else None)


def _reference_characters(scene, camera) -> list[Character] | None:
    """Colours for a new reference render: explicit ones, then left to right as ``camera`` sees the rest."""
    if not uses_identity_colours(scene):
        return None
    return identities.resolve(scene, scene.scail.character_collection, camera)


def render_reference_at(scene, camera, out_dir: str) -> render.ReferenceRender:
    """Render the reference (and its identity pass, which fixes the job's colours) from ``camera``."""
    camera = render.resolve_camera(scene, camera)
    return render.render_reference(scene, camera, scene.scail.engine, reference_size(scene), out_dir, "reference",
                                   characters=_reference_characters(scene, camera))


def render_reference(scene) -> tuple[render.ReferenceRender, str | None]:
    """Render the reference (and its identity pass) into ``//scail/reference/``; update the preview."""
    settings = scene.scail
    root, warning = paths.scail_root()
    result = render_reference_at(scene, reference_camera(scene), os.path.join(root, "reference"))
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


def _render_extra_view(scene, index: int, view, characters: list[Character] | None) -> None:
    """Extra view ``index`` as ``extra_<index>.png`` (the index it is sent with), with an identity pass in the
    job's colours when ``characters`` are given."""
    root, _warning = paths.scail_root()
    result = render.render_reference(
        scene, view.camera, scene.scail.engine, reference_size(scene), os.path.join(root, "reference"),
        f"extra_{index}", characters=characters)
    view.image_path = paths.to_blend_path(result.image_path)
    view.mask_path = paths.to_blend_path(result.identity_path) if result.identity_path else ""


def render_extra_views(scene) -> int:
    """Render every extra view that has a camera; return how many were rendered."""
    views = [(index, view) for index, view in enumerate(scene.scail.extra_views) if view.camera is not None]
    characters = job_characters(scene) if views and uses_identity_colours(scene) else None
    for index, view in views:
        _render_extra_view(scene, index, view, characters)
    return len(views)


def refresh_identity_pass(scene, identity_path: str, characters: list[Character]) -> None:
    """Render an identity pass again, from its camera at its frame, when its legend holds other colours than
    the job's (an explicit colour set, or the reference rendered again, since). Masks without a legend came
    from elsewhere and are left as they are."""
    legend = identities.read_legend(identity_path)
    if legend is None or legend.colours == identities.colour_table(characters):
        return
    camera = bpy.data.objects.get(legend.camera)
    if camera is None or camera.type != "CAMERA":
        raise WorkflowError(f"the identity colours changed since {os.path.basename(identity_path)} was rendered "
                            f"and its camera {legend.camera!r} is gone: render it again")
    current = scene.frame_current
    try:
        scene.frame_set(legend.frame)
        render.render_identity_pass(scene, camera, characters, legend.size, identity_path)
    finally:
        scene.frame_set(current)


def render_scene_driving(scene, size, out_dir: str, characters: list[Character] | None = None,
                         beauty: bool = True) -> render.AnimationRender:
    """The scene's animation over the driving In/Out from the driving camera (else the scene camera), with
    identity masks in the job's colours when ``characters`` are given (only those with ``beauty=False``)."""
    settings = scene.scail
    start, end = driving.scene_range(scene, settings)
    camera = render.resolve_camera(scene, settings.driving_camera)
    return render.render_animation(scene, camera, settings.engine, size, start, end, out_dir, characters, beauty)


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


def _image_reference_size(settings, image_path: str) -> tuple[int, int]:
    """The job size for an external reference image: its aspect at the chosen short side."""
    width, height, _planes = read_rgba_planes(image_path)  # any format Blender reads
    short = render.SHORT_SIDES.get(settings.size) or render.round32(settings.size_short_side)
    return (render.round32(short * width / height), short) if width >= height else \
        (short, render.round32(short * height / width))


def job_size(scene) -> tuple[int, int]:
    """(width, height) a Generate would use now: the rendered reference's, else the settings'."""
    settings = scene.scail
    if settings.reference_source == "IMAGE":
        image_path = paths.absolute(settings.reference_image)
        if not os.path.isfile(image_path):
            raise WorkflowError(f"reference image not found: {image_path or '(no file chosen)'}")
        return _image_reference_size(settings, image_path)
    image_path = paths.absolute(settings.reference_path) if settings.reference_path else ""
    return pngio.png_size(image_path) if os.path.isfile(image_path) else reference_size(scene)


def _reference_inputs(scene, inputs: str, files: dict[str, str]) -> tuple[str, tuple[int, int]]:
    """Reference image and mask into ``files``; return the spec's ``reference_mask`` and the size."""
    settings = scene.scail
    background = mask_background(settings.mode, "reference")
    if settings.reference_source == "IMAGE":
        image_path = paths.absolute(settings.reference_image)
        if not os.path.isfile(image_path):
            raise WorkflowError(f"reference image not found: {image_path or '(no file chosen)'}")
        files["reference"] = image_path
        size = _image_reference_size(settings, image_path)
        mask_path = paths.absolute(settings.reference_mask_image)
        if settings.reference_mask_image:
            if not os.path.isfile(mask_path):
                raise WorkflowError(f"reference mask not found: {mask_path}")
            files["reference_mask"] = mask_path
            return "file", size
        return ("alpha" if _has_transparency(image_path) else "auto"), size
    image_path = paths.absolute(settings.reference_path)
    identity_path = paths.absolute(settings.reference_ids_path) if settings.reference_ids_path else ""
    if not os.path.isfile(image_path) or (uses_identity_colours(scene) and not os.path.isfile(identity_path)):
        render_reference(scene)  # missing, or rendered before Identity Colours were turned on
        image_path = paths.absolute(settings.reference_path)
        identity_path = paths.absolute(settings.reference_ids_path) if settings.reference_ids_path else ""
    files["reference"] = image_path
    mask_path = os.path.join(inputs, "reference_mask.png")
    if not uses_identity_colours(scene):
        identity_path = ""  # one identity: the render's alpha, like the driving masks
    elif identity_path:
        refresh_identity_pass(scene, identity_path, job_characters(scene))
    render.write_mask(image_path, identity_path, background, mask_path)
    files["reference_mask"] = mask_path
    width, height, _planes = read_rgba_planes(image_path)
    return "file", (width, height)


def _extra_inputs(scene, inputs: str, files: dict[str, str], characters: list[Character] | None) -> None:
    """Every extra view as ``extra_reference_<i>`` and its mask, ``i`` = 0, 1, ... in the list's order (the
    order the engine receives them in). A view with a camera is rendered now when its image (or, with
    ``characters``, its identity pass) is missing; a view without one sends its image and mask as they are."""
    settings = scene.scail
    background = mask_background(settings.mode, "reference")
    for index, view in enumerate(settings.extra_views):
        image_path = paths.absolute(view.image_path) if view.image_path else ""
        mask = paths.absolute(view.mask_path) if view.mask_path else ""
        if view.camera is not None:
            if not os.path.isfile(image_path) or (characters is not None and not os.path.isfile(mask)):
                _render_extra_view(scene, index, view, characters)
                image_path = paths.absolute(view.image_path)
                mask = paths.absolute(view.mask_path) if view.mask_path else ""
            if characters is None:
                mask = ""  # one identity: the render's alpha, like the reference
            else:
                refresh_identity_pass(scene, mask, characters)
        elif not image_path:
            raise WorkflowError(f"extra view {index} has no camera and no image: pick a camera or remove the view")
        elif not os.path.isfile(image_path):
            raise WorkflowError(f"extra view {index}: image not found: {image_path}")
        mask_path = os.path.join(inputs, f"extra_reference_mask_{index}.png")
        render.write_mask(image_path, mask, background, mask_path)
        files[f"extra_reference_{index}"] = image_path
        files[f"extra_reference_mask_{index}"] = mask_path


def _driving_inputs(scene, inputs: str, files: dict[str, str], size, characters: list[Character] | None
                    ) -> tuple[str, tuple | None, float | None]:
    """Driving clip and mask into ``files``; return the spec's ``driving_mask``, ``frame_range`` and ``fps``."""
    settings = scene.scail
    source, mask_source = settings.driving_source, settings.driving_mask_source
    if mask_source == "RENDER" and source != "SCENE":
        raise WorkflowError("Mask: Render only exists for the scene's animation; pick Automatic, Clip Alpha "
                            "or Mask File")
    frame_range, fps, info = None, None, None
    if source == "SCENE":
        animation = render_scene_driving(scene, size, os.path.join(inputs, "driving"),
                                         characters if mask_source == "RENDER" else None)
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


def _masks_from_scene(scene) -> bool:
    """Whether this job renders masks from the scene beyond the reference: extra views or driving frames."""
    settings = scene.scail
    return bool(settings.extra_views) or (settings.driving_source == "SCENE"
                                          and settings.driving_mask_source == "RENDER")


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
        reference_mask, size = _reference_inputs(scene, inputs, files)  # first: its render fixes the colours
        characters = job_characters(scene) if _masks_from_scene(scene) else None
        _extra_inputs(scene, inputs, files, characters if uses_identity_colours(scene) else None)
        driving_mask, frame_range, fps = _driving_inputs(scene, inputs, files, size, characters)
        if characters:
            identities.write_assignment(os.path.join(inputs, IDENTITIES_FILE), characters)
        spec = build_spec(GenerateSettings(
            mode=settings.mode, prompt=prompt_text(settings), negative_prompt=settings.negative_prompt,
            preset=settings.preset, size=size, steps=settings.steps, guidance=settings.guidance,
            shift=settings.shift, seed=settings.seed, loras=settings.loras,
            sampler="" if settings.sampler == "PRESET" else settings.sampler,
            step_cache="" if settings.step_cache == "AUTO" else settings.step_cache, frame_range=frame_range, fps=fps,
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
