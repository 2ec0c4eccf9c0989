"""``deblur-rotate serve``: the main job as a local web page (Gradio).

``deblur-rotate serve [--host 127.0.0.1] [--port 7860] [--model FOLDER]`` loads ONE pipeline (the bundled
model, or ``--model``) and serves a page on which a person uploads a blurry face photo (or picks a built-in
example), chooses the views and presses "Deblur and rotate". The page then shows:

* the blurry input with the faces found boxed and numbered, the aligned crops the networks saw, and a
  choice of face when there are several (every face is processed; the choice only changes what is shown);
* per view, the sharp frames as a looping GIF (the MP4 is among the downloads) and the frames one by one;
* the contact sheet (rows: views; columns: the input, then frames 1..T, as ``deblur-rotate run`` writes it);
* E_3D's head-pose estimate, and the time the request took;
* downloads: a zip of every frame (all faces, all views) and, for the face shown, each view's MP4 and GIF,
  the sweep's and the contact sheet.

Views: the input view, one new view set with the yaw/pitch sliders (limited to the range the model was
trained on: ``view_range`` in pipeline.json, top level or under ``extra``, as ``{"yaw_deg": [lo, hi],
"pitch_deg": [lo, hi]}``; without it +-60 deg yaw and +-20 deg pitch), the frontal view (the face turned to
look into the camera, from E_3D's pose estimate) and a sweep (an orbit over the yaw range). Choices the
model cannot do (no F: only the input view; no E_3D: no frontal view) are left out of the page.

Serving rules:

* the pipeline and the face finder are loaded once, before the page opens, and shared by all requests;
  requests wait in a queue (at most QUEUE_SIZE) and run one at a time, with a progress bar on the page;
* a problem with one upload (an unreadable file, a photo without a face, an image larger than MAX_SIDE
  pixels a side or MAX_UPLOAD_MB, a video longer than MAX_VIDEO_FRAMES frames) is written on the page as one
  readable sentence and the server goes on; an unexpected failure is shown the same way, with its traceback
  in the server's log;
* every file the server writes (uploads, results, Gradio's cache, Python temp files) lies in one temp folder
  of its own, made at start, printed at start and removed at exit; results of all but the last
  KEEP_RESULTS requests are removed as new ones come;
* it binds to 127.0.0.1 (this machine only) unless ``--host`` says otherwise, and says so at start.

The requests' work (checking uploads, running the pipeline, writing results) is :mod:`deblur_rotate.serve_app`;
this module builds the page and runs the server. The photo path (reading, face finding and alignment) is
:mod:`deblur_rotate.faces`' and the writing (GIF, MP4, contact sheet, view names) :mod:`deblur_rotate.outputs`',
as ``run`` uses them, so the page gives what ``run`` gives.
A video upload (an extension of :data:`deblur_rotate.video_io.VIDEO_EXTS`) goes through the video path,
:func:`deblur_rotate.video.process_video` (``run -i clip.mp4``): one sharp MP4 per view at K x the frame rate
(face tracks, time order, smoothing), shown on the page with its first frames; the sweep is for photos only.
"""
from __future__ import annotations

import argparse
import os
import shutil
import signal
import sys
import tempfile
import threading
import time
import traceback
from pathlib import Path

from deblur_rotate.errors import UserError
from deblur_rotate.serve_app import (  # the requests' work; this module is the page and the command
    DEFAULT_HOST,
    DEFAULT_PORT,
    MAX_SIDE,
    MAX_UPLOAD_MB,
    MAX_VIDEO_FRAMES,
    QUEUE_SIZE,
    VIEW_INPUT,
    VIEW_NEW,
    RequestResult,
    ServeApp,
    boxed_photo,
    check_upload,
)

__all__ = ["add_arguments", "build_page", "serve_command"]

# --------------------------------------------------------------------------------------------------- options


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The options of ``deblur-rotate serve``."""
    p.add_argument("--host", default=DEFAULT_HOST,
                   help=f"address to bind (default {DEFAULT_HOST}: this machine only; 0.0.0.0 opens the page to "
                        "every machine that can reach this one)")
    p.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"port (default {DEFAULT_PORT})")
    p.add_argument("--model", type=Path, default=None, metavar="FOLDER",
                   help="model folder (pipeline.json + one sub-folder per network); default: the bundled model")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="default: cpu")
    from deblur_rotate.refine import add_refine_argument

    add_refine_argument(p)


# -------------------------------------------------------------------------------------------------------- page

CSS = """
#videos img, #frames img, #faces img, #examples img, #contact-sheet img { image-rendering: pixelated; }
#status { min-height: 1.5em; }
"""


def _example_files(root: Path) -> list[tuple[str, str]]:
    """Copies of the built-in examples in the server's temp folder: [(path, caption)]."""
    from deblur_rotate.demo import examples_dir

    out = []
    folder = root / "examples"
    for src in sorted(examples_dir().glob("example_*/blurry.png")):
        folder.mkdir(parents=True, exist_ok=True)
        dest = folder / f"{src.parent.name}.png"
        shutil.copyfile(src, dest)
        out.append((str(dest), src.parent.name.replace("_", " ")))
    return out


def build_page(app: ServeApp):
    """The Gradio Blocks of the page, wired to ``app`` (one request at a time, a queue, progress)."""
    import gradio as gr

    pipe = app.pipe
    yaw_lo, yaw_hi = app.range["yaw_deg"]
    pitch_lo, pitch_hi = app.range["pitch_deg"]
    examples = _example_files(app.root)
    choices = app.view_choices()
    empty = (None, [], gr.update(choices=[], value=None, visible=False), [], [], None, "", [])

    def show(result: RequestResult | None, k: int | None):
        """The outputs for face ``k`` of ``result`` (empty ones without a result)."""
        if result is None or not result.faces:
            return empty
        k = 0 if k is None else max(0, min(int(k), len(result.faces) - 1))
        face = result.faces[k]
        labels = [f"face {i + 1}" for i in range(len(result.faces))]
        return (result.photo,
                [(f.crop, f"face {i + 1}") for i, f in enumerate(result.faces)],
                gr.update(choices=[(label, i) for i, label in enumerate(labels)], value=k,
                          visible=len(result.faces) > 1),
                [(gif, view) for view, gif, _mp4 in face.videos],
                list(face.frames),
                face.contact_sheet,
                app.details_text(result, k),
                app.downloads(result, k))

    def show_face(result: RequestResult | None, k: int | None):
        """The face choice: the outputs of ``show`` but the choice itself."""
        out = show(result, k)
        return out[:2] + out[3:]

    def failure(message: str):
        """Status text and cleared outputs for a failed request."""
        return (f"❌ **Could not process the photo:** {_escape(message)}", None) + empty

    def run(path, aligned, chosen, yaw, pitch, progress=gr.Progress(track_tqdm=True)):  # noqa: B008 - Gradio injects it
        """The button: one request through the pipeline."""
        name = Path(path).name if path else None
        try:
            result = app.process(path, name, bool(aligned), list(chosen or []), yaw, pitch, progress=progress)
        except UserError as err:
            print(f"request failed: {err}", flush=True)
            return failure(str(err))
        except Exception as err:  # noqa: BLE001 - the server must stay up; the trace goes to its log
            traceback.print_exc()
            return failure(f"unexpected {type(err).__name__}: {err} (the server's log has the details)")
        print(f"request done: {result.name}, {len(result.faces)} face(s), views {', '.join(result.views)}, "
              f"{result.seconds:.2f} s", flush=True)
        return (app.status_text(result), result) + show(result, 0)

    def preview(path):
        """On upload: show the photo (or what is wrong with it) before the button is pressed."""
        if not path:
            return "", None
        try:
            photo = check_upload(path, Path(path).name)
        except UserError as err:
            return f"❌ **Could not read the photo:** {_escape(str(err))}", None
        h, w = photo.shape[:2]
        return (f"`{Path(path).name}`: {w} x {h} px. Choose the views and press **Deblur and rotate**.",
                boxed_photo(photo, []))

    def pick_example(evt):
        """A click on a built-in example: it becomes the upload, taken as an aligned crop."""
        return examples[evt.index][0], True

    pick_example.__annotations__["evt"] = gr.SelectData  # a real class (this module's annotations are strings)

    with gr.Blocks(title="deblur-rotate", analytics_enabled=False, delete_cache=(900, 1800)) as page:
        gr.Markdown(
            "# deblur-rotate\n"
            "One motion-blurred face photo in, the **5 sharp frames** of the moment the shutter was open out, "
            "from the original or a new viewpoint (a reimplementation of *Learning to Deblur and Rotate "
            f"Motion-Blurred Faces*, BMVC 2021). Model: {_escape(app.model_label)}, {pipe.resolution} px faces"
            + ("" if pipe.can_rotate else "; this model has no fusion network, so only the input view") + ".")
        with gr.Row():
            with gr.Column(scale=1):
                upload = gr.File(label=f"Blurry face photo or video (≤ {MAX_UPLOAD_MB} MB, ≤ {MAX_SIDE} px a side; "
                                       f"videos ≤ {MAX_VIDEO_FRAMES} frames)",
                                 type="filepath", elem_id="photo-upload")
                gr.Markdown("Or click a built-in example (held-out synthetic faces; the bundled model knows "
                            "only synthetic faces):")
                example_gallery = gr.Gallery(value=examples, label="Built-in examples", columns=2, height=280,
                                             allow_preview=False, elem_id="examples", show_label=False,
                                             object_fit="contain", fit_columns=False)
                aligned = gr.Checkbox(label="The photo is an aligned face crop (skip face finding)", value=False,
                                      elem_id="aligned")
                views = gr.CheckboxGroup(choices=choices, value=[c for c in (VIEW_INPUT, VIEW_NEW) if c in choices],
                                         label="Views", elem_id="views",
                                         info="new view and sweep: within the trained range, "
                                              f"yaw {yaw_lo:g}..{yaw_hi:g}°, "
                                              f"pitch {pitch_lo:g}..{pitch_hi:g}°; frontal: the face turned to the "
                                              "camera")
                yaw = gr.Slider(yaw_lo, yaw_hi, value=min(30.0, yaw_hi), step=1, label="new view: yaw (degrees)",
                                visible=pipe.can_rotate, elem_id="yaw")
                pitch = gr.Slider(pitch_lo, pitch_hi, value=0.0, step=1, label="new view: pitch (degrees)",
                                  visible=pipe.can_rotate, elem_id="pitch")
                button = gr.Button("Deblur and rotate", variant="primary", elem_id="run-button")
            with gr.Column(scale=2):
                status = gr.Markdown("Upload a blurry face photo or click an example, then press **Deblur and "
                                     "rotate**.", elem_id="status")
                with gr.Row():
                    photo = gr.Image(label="Blurry input (faces found are boxed)", type="numpy", interactive=False,
                                     elem_id="blurry-input", height=260)
                    faces = gr.Gallery(label="Detected faces (aligned crops the networks saw)", columns=4, height=260,
                                       allow_preview=False, elem_id="faces", object_fit="contain",
                                       fit_columns=False)
                face_choice = gr.Radio(label="Show face", type="value", visible=False, elem_id="face-choice")
                videos = gr.Gallery(label="Sharp frames per view (looping GIF; a video upload: its MP4s)",
                                    columns=4, elem_id="videos", object_fit="contain", fit_columns=False,
                                    height=210)
                frames = gr.Gallery(label="Frames, per view", columns=5, elem_id="frames", object_fit="contain",
                                    fit_columns=False, height=420)
                sheet = gr.Image(label="Contact sheet (input, then frames 1..T, per view)", type="filepath",
                                 interactive=False, elem_id="contact-sheet")
                details = gr.Markdown(elem_id="details")
                files = gr.File(label="Downloads (frames zip, MP4 and GIF per view, contact sheet)",
                                file_count="multiple", interactive=False, elem_id="downloads")
        state = gr.State(None)

        outputs = [status, state, photo, faces, face_choice, videos, frames, sheet, details, files]
        button.click(run, [upload, aligned, views, yaw, pitch], outputs, concurrency_limit=1,
                     concurrency_id="pipeline", show_progress="full", api_visibility="private")
        upload.upload(preview, [upload], [status, photo], concurrency_limit=4, api_visibility="private")
        face_choice.input(show_face, [state, face_choice], [photo, faces, videos, frames, sheet, details, files],
                          concurrency_limit=4, api_visibility="private")
        example_gallery.select(pick_example, None, [upload, aligned], concurrency_limit=4, api_visibility="private")
    return page


def _escape(text: str) -> str:
    """Text safe to put in the page's Markdown/HTML."""
    import html

    return html.escape(text, quote=False).replace("*", "\\*").replace("_", "\\_").replace("`", "\\`")


# --------------------------------------------------------------------------------------------------- command


def _is_loopback(host: str) -> bool:
    """True when ``host`` is reachable from this machine only (localhost, 127.x.x.x, ::1)."""
    import ipaddress

    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def serve_command(args) -> int:
    """``deblur-rotate serve``: load the model once, serve the page until Ctrl-C (or SIGTERM), clean up."""
    if not 1 <= args.port <= 65535:
        raise UserError(f"--port must be between 1 and 65535 (got {args.port})")
    root = Path(tempfile.mkdtemp(prefix="deblur-rotate-serve-"))
    try:
        # Everything the server and Gradio write goes under root: set before Gradio is imported.
        (root / "tmp").mkdir()
        os.environ["GRADIO_TEMP_DIR"] = str(root / "gradio")
        os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"
        os.environ["GRADIO_EXAMPLES_CACHE"] = str(root / "gradio" / "examples")
        os.environ["HF_HUB_OFFLINE"] = "1"
        os.environ["TMPDIR"] = str(root / "tmp")
        tempfile.tempdir = str(root / "tmp")
        from deblur_rotate.pipeline import DeblurRotatePipeline, bundled_model_dir

        print(f"loading the model {args.model or bundled_model_dir()} ...", flush=True)
        pipe = DeblurRotatePipeline.from_pretrained(args.model, device=args.device)
        pipe.refine = pipe.refine_settings(getattr(args, "refine_steps", None),  # None: the model's default
                                            getattr(args, "refine_residual", None))
        label = "the bundled tiny model" if args.model is None else f"model {args.model}"
        app = ServeApp(pipe, root, model_label=label)
        app.warm_up()
        import gradio as gr  # noqa: F401 - imported here, not at the top: `deblur-rotate --help` stays fast

        page = build_page(app)
        page.queue(max_size=QUEUE_SIZE, default_concurrency_limit=1)
        previous = {}
        if threading.current_thread() is threading.main_thread():
            # Ctrl-C and SIGTERM stop the server the same way (also when started in the background, where the
            # shell may have ignored SIGINT), so the temp folder is always removed
            previous = {signal.SIGTERM: signal.signal(signal.SIGTERM, _raise_interrupt),
                        signal.SIGINT: signal.signal(signal.SIGINT, signal.default_int_handler)}
        host = "localhost" if args.host == "localhost" else args.host
        url_host = "127.0.0.1" if host in ("0.0.0.0", "localhost") else host
        try:
            page.launch(server_name=host, server_port=args.port, prevent_thread_lock=True, quiet=True,
                        share=False, max_file_size=f"{MAX_UPLOAD_MB}mb", ssr_mode=False, mcp_server=False,
                        pwa=False, show_error=False, css=CSS, footer_links=["gradio"],
                        allowed_paths=[str(root)])
        except OSError as err:
            raise UserError(f"cannot serve on {args.host}:{args.port} ({err}); is the port in use? give --port") \
                from None
        where = ("this machine only (127.0.0.1); give --host 0.0.0.0 to open it to other machines"
                 if _is_loopback(host) else
                 f"{host}: every machine that can reach this one can use the page")
        print(f"deblur-rotate serve: http://{url_host}:{args.port}/  (bound to {where})", flush=True)
        print(f"temp folder: {root} (removed at exit); Ctrl-C to stop", flush=True)
        try:
            while True:
                time.sleep(0.5)
        except KeyboardInterrupt:
            print("stopping", flush=True)
        finally:
            page.close()
            for signum, handler in previous.items():
                signal.signal(signum, handler)
    finally:
        shutil.rmtree(root, ignore_errors=True)
        tempfile.tempdir = None
    return 0


def _raise_interrupt(signum, frame):
    """SIGTERM handler: stop the way Ctrl-C does (the temp folder is removed)."""
    raise KeyboardInterrupt


if __name__ == "__main__":  # pragma: no cover
    sys.exit(serve_command(argparse.Namespace(host=DEFAULT_HOST, port=DEFAULT_PORT, model=None, device="cpu")))
