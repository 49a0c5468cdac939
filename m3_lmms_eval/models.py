"""The lmms-eval models. ``m3`` answers every request at one scale with the project's inference code
(:mod:`m3.inference`, the oracle's loop: each distinct image of a batch through the vision tower once);
``m3_adaptive`` routes each (image, question) with :class:`adaptive.AdaptiveM3`. Both write prompts in the model's
conversation template (:mod:`m3.templates`: ``vicuna_v1`` for converted M3 checkpoints, as the official fork
evaluates them) and behave as lmms-eval's own ``llava_hf`` where users rely on it:

* docs with no image (text-only), several images, or ``<image>`` placeholders already in the context (kept where they
  stand; without one, one placeholder line per image goes in front);
* a generation doc that fails (an unreadable image, a video file, a misplaced placeholder, a question past the
  model's context...) answers ``""``, scored as a wrong answer, and is logged; the rest of its batch is answered;
* a loglikelihood (multiple-choice) doc that fails stops the run with :class:`FailedDocsError` naming it (task,
  split, doc id, why), on every process: lmms-eval takes the option of smallest loss, so any loss the model could
  report would score the doc as if the model had chosen an option;
* ``generation_kwargs``: ``max_new_tokens`` (default 1024), ``temperature`` > 0 (or ``do_sample: true``) samples with
  ``top_p``, ``num_beams``, and ``until`` cuts the answer at the first stop string;
* every model arg and generation kwarg is read by one table (:mod:`m3_lmms_eval.arguments`): a bad value is one
  ``ValueError`` line when the model is built (a task's generation_kwargs: before its first doc runs);
* ``loglikelihood`` (multiple-choice tasks) at the model's scale (``m3_adaptive``: the routed scale of each image);
* several processes (``accelerate launch`` or ``torchrun``; on CPU with ``ACCELERATE_USE_CPU=true``): lmms-eval gives
  each process its share of the requests by ``RANK`` / ``WORLD_SIZE`` and merges the results; each process uses its
  own device (``cuda:LOCAL_RANK``);
* ``--batch_size auto`` starts at ``--max_batch_size`` (default 64) and halves a batch that runs out of memory.

Each answer reports the visual tokens it used (``token_counts`` in ``--log_samples`` output: ``visual_tokens``,
``scale``, ``input_tokens``).
"""

from __future__ import annotations

import hashlib
import json
import math
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from lmms_eval.api.instance import GenerationResult, Instance, TokenCounts
from lmms_eval.api.model import lmms
from loguru import logger
from PIL import Image

from m3.images import BadImageError, open_rgb, to_rgb
from m3.templates import TEMPLATE_NAMES

from .arguments import AUTO, GENERATION_KWARGS, Arg, check_arg_string, read_args, read_until, read_value

AUTO_BATCH_START = 64  # batch_size=auto without --max_batch_size
VIDEO_SUFFIXES = {".mp4", ".avi", ".mov", ".mkv", ".webm", ".flv", ".wmv", ".m4v", ".mpeg", ".mpg", ".3gp"}
FAILED_LOSS = math.inf  # the placeholder of a failed loglikelihood request, never returned (the run stops)
SHOWN_FAILURES = 3  # docs named in a FailedDocsError


@dataclass
class VisualTokenCounts(TokenCounts):
    """lmms-eval's per-request token counts plus the visual tokens the LLM saw and the scale they came from
    (``scale``: one scale, or a list with one per image; None for a text-only doc)."""

    visual_tokens: int | None = None
    scale: int | list[int] | None = None

    def to_dict(self) -> dict:
        counts = super().to_dict()
        counts.update(visual_tokens=self.visual_tokens, scale=self.scale)
        return counts


class DocError(ValueError):
    """A request this model cannot answer (its doc, not the batch, is at fault); ``where`` names the doc."""

    def __init__(self, message: str, where: str = "") -> None:
        super().__init__(message)
        self.where = where


class FailedDocsError(RuntimeError):
    """Loglikelihood docs could not be scored: the run stops (lmms-eval would score them as chosen options)."""


@dataclass
class Doc:
    """One request, unpacked: the context, its images (in placeholder order) and what the request asks for."""

    context: str
    images: list[Image.Image]
    gen_kwargs: dict
    continuation: str | None
    where: str


def _device(device: str | None, accelerator) -> torch.device:
    """lmms-eval's ``--device`` (unset: the accelerator's, i.e. this process's GPU or the CPU); with several
    processes a CUDA device becomes this process's own (``cuda:LOCAL_RANK``)."""
    if device in (None, "", "auto"):
        return accelerator.device
    if str(device).startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device={device!r} but CUDA is not available; pass --device cpu")
    try:
        chosen = torch.device(device)
    except (RuntimeError, TypeError):
        raise ValueError(f"device={device!r} is not a torch device (cpu, cuda, cuda:N, mps, ...)") from None
    if chosen.type == "cuda" and accelerator.num_processes > 1:
        return torch.device("cuda", accelerator.local_process_index)
    return chosen


def _dtype(dtype: str, device: torch.device) -> torch.dtype:
    """``auto``: bfloat16 on GPU (the paper's setting), float32 on CPU (the oracle's, so answers agree)."""
    if dtype == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return getattr(torch, dtype)


BATCH_SIZE = Arg(int, low=1, default=1, auto=True)
MAX_BATCH_SIZE = Arg(int, low=1)


def _batch_size(batch_size, max_batch_size) -> tuple[int, bool]:
    """``(size, auto)``: lmms-eval's ``--batch_size`` N, ``auto`` or ``auto:N`` (auto starts at ``--max_batch_size``,
    else :data:`AUTO_BATCH_START`, and halves on out-of-memory)."""
    start = read_value("max_batch_size", max_batch_size, MAX_BATCH_SIZE)
    size = read_value("batch_size", batch_size, BATCH_SIZE)
    if size == AUTO:
        return start or AUTO_BATCH_START, True
    return size, False


def _sum_over_processes(count: int, device: torch.device) -> int:
    """``count`` summed over lmms-eval's processes (itself in a single process): every process learns of a failure
    on any of them, so all stop together instead of one waiting for the others at the next gather."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return count
    total = torch.tensor([count], device=device if dist.get_backend() == "nccl" else "cpu")
    dist.all_reduce(total)
    return int(total.item())


def _open_visual(visual, where: str) -> list[Image.Image]:
    """A visual of a doc as RGB images: a PIL image, an image file path, or a list of them. Video files are refused:
    M3 answers about images (decode the frames into images in the task's doc_to_visual)."""
    if visual is None:
        return []
    if isinstance(visual, (list, tuple)):
        return [image for item in visual for image in _open_visual(item, where)]
    if isinstance(visual, Image.Image):
        try:
            return [to_rgb(visual, where)]
        except BadImageError as error:
            raise DocError(str(error)) from error
    if isinstance(visual, (str, Path)):
        path = Path(visual)
        if path.suffix.lower() in VIDEO_SUFFIXES:
            raise DocError(
                f"{where}: {path.name} is a video; M3 answers about images: make the task's doc_to_visual return frames"
            )
        try:
            return [open_rgb(path, where)]
        except BadImageError as error:
            raise DocError(f"{where}: {error}") from error
    raise DocError(f"{where}: visuals of type {type(visual).__name__} are not supported (images only)")


def _truncate(text: str, until) -> str:
    """Cut a generation at the first stop string of the task (``until``)."""
    for stop in [until] if isinstance(until, str) else until or []:
        if stop:
            text = text.split(stop)[0]
    return text.strip()


def _out_of_memory(error: BaseException) -> bool:
    return isinstance(error, torch.cuda.OutOfMemoryError) or "out of memory" in str(error).lower()


def _image_key(image: Image.Image) -> str:
    return hashlib.sha1(image.tobytes() + repr((image.size, image.mode)).encode()).hexdigest()


class _M3Base(lmms):
    """What both models share: argument checks, processes and devices, request unpacking, batching with fallbacks.

    ``MODEL_ARGS`` is the table of the model's arguments (:class:`m3_lmms_eval.arguments.Arg` rows): all of them are
    read, checked and stored in ``self.args`` before anything loads."""

    is_simple = True
    MODEL_ID = ""  # the name lmms-eval knows the model by (m3_lmms_eval.manifests)
    MODEL_ARGS: dict[str, Arg] = {
        "pretrained": Arg(str, required=True),
        "dtype": Arg(str, choices=("auto", "float32", "bfloat16", "float16"), default="auto"),
        "batch_size": BATCH_SIZE,
        "max_batch_size": MAX_BATCH_SIZE,
        "device": Arg(str),
    }

    @classmethod
    def create_from_arg_string(cls, arg_string: str, additional_config: dict | None = None):
        """lmms-eval's constructor from ``--model_args``; an argument named twice is refused (its parser keeps the
        last value silently)."""
        check_arg_string(arg_string)
        return super().create_from_arg_string(arg_string, additional_config)

    def __init__(self, **model_args) -> None:
        super().__init__()
        self.args = read_args(self.MODEL_ARGS, model_args, owner=self.MODEL_ID)
        from accelerate import Accelerator

        self.batch_size_per_process, self.auto_batch = _batch_size(self.args["batch_size"], self.args["max_batch_size"])
        self.accelerator = Accelerator()  # lmms-eval gathers through it; one process per device
        self._rank, self._world_size = self.accelerator.process_index, self.accelerator.num_processes
        self._device = _device(self.args["device"], self.accelerator)
        self._ignored_kwargs: set[str] = set()  # generation kwargs already logged as ignored
        if self.auto_batch:
            logger.info(f"{type(self).__name__}: batch_size=auto starts at {self.batch_size_per_process}")

    @property
    def device(self) -> torch.device:
        return self._device

    @property
    def batch_size(self) -> int:
        return self.batch_size_per_process

    @property
    def processor(self):
        raise NotImplementedError

    # ---- requests
    def _unpack(self, request: Instance) -> Doc:
        """A request as a :class:`Doc`; :class:`DocError` when its doc cannot be read."""
        args = request.args
        if len(args) == 2:  # lmms-eval's unconditional requests (acc_mutual_info): no doc, no image
            return Doc("", [], {}, args[1], "an unconditional request")
        context, second, doc_to_visual, doc_id, task, split = args
        where = f"task {task} split {split} doc {doc_id}"
        try:
            doc = self.task_dict[task][split][doc_id]
            images = _open_visual(doc_to_visual(doc), where)
            continuation = None
            if request.request_type == "loglikelihood":
                continuation = second if isinstance(second, str) else second(doc)
        except DocError as error:
            error.where = where
            raise
        except Exception as error:  # a task function that fails on this doc
            raise DocError(f"{where}: {type(error).__name__}: {error}", where) from error
        gen_kwargs = dict(second or {}) if request.request_type != "loglikelihood" else {}
        return Doc(context, images, gen_kwargs, continuation, where)

    def _batches(self, docs: Sequence[Doc | DocError], key: Callable[[Doc], str]) -> list[list[int]]:
        """Indices of the readable docs in order, cut into batches of ``batch_size`` with equal ``key``."""
        batches: list[list[int]] = []
        previous = None
        for index, doc in enumerate(docs):
            if isinstance(doc, DocError):
                continue
            value = key(doc)
            if batches and value == previous and len(batches[-1]) < self.batch_size_per_process:
                batches[-1].append(index)
            else:
                batches.append([index])
            previous = value
        return batches

    def _run(self, docs: list[Doc], work: Callable[[list[Doc]], list], failed) -> list:
        """``work`` on a batch; out of memory with ``batch_size=auto`` halves the batch size (for the rest of the run)
        and retries; any other failure answers the docs one by one, and a doc that fails alone gets
        ``failed(doc, error)``, logged."""
        size = self.batch_size_per_process
        if len(docs) > size:  # a batch cut before the batch size shrank
            return [
                result
                for start in range(0, len(docs), size)
                for result in self._run(docs[start : start + size], work, failed)
            ]
        try:
            return work(docs)
        except Exception as error:
            if self.auto_batch and _out_of_memory(error) and size > 1:
                self.batch_size_per_process = max(1, min(size, len(docs)) // 2)
                logger.warning(
                    f"{type(self).__name__}: out of memory; batch_size=auto is now {self.batch_size_per_process}"
                )
                return self._run(docs, work, failed)
            if len(docs) > 1:
                return [result for doc in docs for result in self._run([doc], work, failed)]
            logger.error(f"{type(self).__name__}: {docs[0].where} failed: {type(error).__name__}: {error}")
            return [failed(docs[0], error)]

    def _unpack_all(self, requests: list[Instance]) -> list[Doc | DocError]:
        """Every request unpacked (:meth:`_unpack`), or its :class:`DocError`, logged once per doc (a multiple-choice
        doc makes one request per option)."""
        docs, logged = [], set()
        for request in requests:
            try:
                docs.append(self._unpack(request))
            except DocError as error:
                if error.where not in logged:
                    logged.add(error.where)
                    logger.error(f"{type(self).__name__}: {error}")
                docs.append(error)
        return docs

    # ---- generation
    def _settings(self, doc: Doc) -> tuple[int, dict, list[str]]:
        """``(max_new_tokens, generate kwargs, stop strings)`` of a doc's generation_kwargs, read as lmms-eval's
        llava_hf reads them (sampling when ``temperature`` > 0 or ``do_sample``, with ``top_p``; ``num_beams``) through
        :data:`m3_lmms_eval.arguments.GENERATION_KWARGS`: a bad value is the task's error (``ValueError``), not the
        doc's. Other keys are ignored, as llava_hf ignores them, and logged once."""
        what = f"{doc.where}: generation_kwargs"
        known = {key: value for key, value in doc.gen_kwargs.items() if key in GENERATION_KWARGS}
        ignored = sorted(set(doc.gen_kwargs) - set(GENERATION_KWARGS) - {"until"} - self._ignored_kwargs)
        if ignored:
            self._ignored_kwargs.update(ignored)
            logger.warning(f"{type(self).__name__}: ignores generation_kwargs {ignored} (it reads "
                           f"{sorted([*GENERATION_KWARGS, 'until'])})")  # fmt: skip
        values = read_args(GENERATION_KWARGS, known, what)
        config = self.model.config
        context = getattr(getattr(config, "text_config", config), "max_position_embeddings", None)
        if context and values["max_new_tokens"] >= context:  # no doc could fit: the task's error, not each doc's
            raise ValueError(
                f"{what} max_new_tokens={values['max_new_tokens']} leaves no room for a question in the model's "
                f"context of {context} tokens"
            )
        settings = {}
        if values["temperature"] > 0 or values["do_sample"]:
            settings["do_sample"] = True
            if values["temperature"] > 0:
                settings["temperature"] = values["temperature"]
            if values["top_p"] is not None:
                settings["top_p"] = values["top_p"]
        if values["num_beams"] > 1:
            settings["num_beams"] = values["num_beams"]
        return values["max_new_tokens"], settings, read_until(doc.gen_kwargs.get("until"), what)

    def generate_until(self, requests: list[Instance]) -> list[GenerationResult]:
        docs = self._unpack_all(requests)
        results = [GenerationResult(text="", token_counts=VisualTokenCounts()) for _ in docs]  # failed docs keep these
        failures = [str(doc) for doc in docs if isinstance(doc, DocError)]

        def settings_key(doc: Doc) -> str:  # a batch shares its generation settings
            return json.dumps(doc.gen_kwargs, sort_keys=True, default=str)

        def work(batch_docs: list[Doc]) -> list[GenerationResult]:
            max_new_tokens, settings, until = self._settings(batch_docs[0])
            outputs = self._generate(batch_docs, max_new_tokens, settings)
            return [GenerationResult(text=_truncate(text, until), token_counts=counts) for text, counts in outputs]

        def failed(doc: Doc, error: Exception) -> GenerationResult:
            failures.append(f"{doc.where}: {type(error).__name__}: {error}")
            return GenerationResult(text="", token_counts=VisualTokenCounts())

        for batch in self._batches(docs, settings_key):
            self._settings(docs[batch[0]])  # a task's bad generation_kwargs stop the run here, before any doc
            for index, result in zip(batch, self._run([docs[i] for i in batch], work, failed)):
                results[index] = result
        if failures:
            logger.warning(
                f'{type(self).__name__}: {len(failures)} of {len(docs)} generation request(s) failed and answer "" '
                f"(scored as wrong answers); first: {failures[0]}"
            )
        self._report(results)
        return results

    def _generate(self, docs: list[Doc], max_new_tokens: int, settings: dict) -> list[tuple[str, VisualTokenCounts]]:
        raise NotImplementedError

    def _report(self, results: list[GenerationResult]) -> None:
        tokens = [r.token_counts.visual_tokens for r in results if r.token_counts.visual_tokens is not None]
        scales = Counter(json.dumps(r.token_counts.scale) for r in results)
        if tokens:
            logger.info(
                f"{type(self).__name__}: {len(results)} answers, mean visual tokens {sum(tokens) / len(tokens):.1f}, "
                f"answers per scale {dict(sorted(scales.items()))}"
            )

    # ---- likelihood
    def loglikelihood(self, requests: list[Instance]) -> list[GenerationResult]:
        """Per request ``(loss, greedy)`` as lmms-eval's own LLaVA models report it: the continuation's mean negative
        log-likelihood per token (lmms-eval 0.7.3's multiple_choice takes the option with the smallest) and whether
        greedy decoding gives exactly the continuation. The pair is wrapped in a ``GenerationResult`` (with the
        visual token counts): lmms-eval 0.7.3's evaluator turns a bare ``(float, bool)`` into its string, which
        breaks every multiple-choice task."""
        docs = self._unpack_all(requests)
        results = [GenerationResult(text=(FAILED_LOSS, False), token_counts=VisualTokenCounts()) for _ in docs]
        failures = {doc.where: str(doc) for doc in docs if isinstance(doc, DocError)}

        def work(batch_docs: list[Doc]) -> list[GenerationResult]:
            return [
                GenerationResult(text=(score.mean_nll, score.greedy), token_counts=counts)
                for score, counts in self._score(batch_docs)
            ]

        def failed(doc: Doc, error: Exception) -> GenerationResult:
            failures.setdefault(doc.where, f"{doc.where}: {type(error).__name__}: {error}")
            return GenerationResult(text=(FAILED_LOSS, False), token_counts=VisualTokenCounts())

        for batch in self._batches(docs, key=lambda doc: ""):
            for index, result in zip(batch, self._run([docs[i] for i in batch], work, failed)):
                results[index] = result
        self._stop_on_failures(list(failures.values()))
        return results

    def _stop_on_failures(self, failures: list[str]) -> None:
        """Raise :class:`FailedDocsError` on every process when any process has loglikelihood docs it could not
        score (``failures``: one ``"where: why"`` per doc)."""
        total = _sum_over_processes(len(failures), self.device)
        if not total:
            return
        shown = "; ".join(failures[:SHOWN_FAILURES]) if failures else "they failed on another process: see its log"
        raise FailedDocsError(
            f"{self.MODEL_ID}: {total} loglikelihood doc(s) could not be scored ({shown}). lmms-eval would count each "
            "as a chosen option (the first), so the run stops: fix those docs or leave them out of the task"
        )

    def _score(self, docs: list[Doc]) -> list:
        raise NotImplementedError

    def generate_until_multi_round(self, requests):
        raise NotImplementedError(
            f"{type(self).__name__} answers single-turn questions only: multi-round tasks are not supported"
        )

    # ---- shared inference
    def _encode(self, docs: list[Doc]):
        """``(grids, image_sizes, compact prompts)`` of a batch: each distinct image through the vision tower once,
        every image's grid in prompt order."""
        from m3.inference import compact_prompts, encode_images

        images = [image for doc in docs for image in doc.images]
        keys = [_image_key(image) for image in images]
        unique = list(dict.fromkeys(keys))
        grids, sizes = [], None
        if unique:
            distinct, sizes = encode_images(self.model, self.processor, [images[keys.index(key)] for key in unique])
            index = [unique.index(key) for key in keys]
            grids = [distinct[i] for i in index]
            sizes = None if sizes is None else sizes[torch.tensor(index)]
        counts = [len(doc.images) for doc in docs]
        compact = compact_prompts(self.processor, [doc.context for doc in docs], sizes, num_images=counts)
        return grids, sizes, compact

    def _visual_tokens(self, docs, grids, sizes, scales) -> tuple[list[int], list]:
        """Each doc's visual tokens with its images at ``scales`` (one per image, in prompt order), and its scale (one,
        one per image, or None for a text-only doc)."""
        from m3.prompting import image_token_counts

        per_image = image_token_counts(self.model.config, list(scales), sizes, len(grids)) if grids else []
        visual, named, start = [], [], 0
        for doc in docs:
            end = start + len(doc.images)
            visual.append(sum(per_image[start:end]))
            mine = list(scales[start:end])
            named.append(None if not mine else mine[0] if len(set(mine)) == 1 else mine)
            start = end
        return visual, named

    def _check_context(self, docs, compact, visual, named, max_new_tokens: int, extra=None) -> None:
        """Refuse a doc whose prompt (with ``extra`` continuation tokens per doc), visual tokens and ``max_new_tokens``
        overrun the model's context (:func:`m3.prompting.check_context`, as every other path checks it): past its
        position embeddings the model answers garbage, silently. A batch that fails is answered doc by doc, so only
        the doc at fault fails."""
        from m3.prompting import check_context, compact_text_tokens

        text = compact_text_tokens(compact, self.model.config.image_token_id)
        if extra is not None:
            text = [count + len(ids) for count, ids in zip(text, extra)]
        remedy = "Shorten the doc's context" + (" or its continuation" if extra is not None else "")
        check_context(self.model.config, text, visual, max_new_tokens, [doc.where for doc in docs], named, remedy)

    def _answer(self, docs, grids, sizes, compact, scales, max_new_tokens, settings):
        """Answers of a batch with every image at its scale (``scales``: one per image, in prompt order)."""
        from m3.inference import generate_at_scale

        visual, named = self._visual_tokens(docs, grids, sizes, scales)
        self._check_context(docs, compact, visual, named, max_new_tokens)
        output = generate_at_scale(
            self.model, self.processor, compact, grids, sizes, scales, max_new_tokens, **settings
        )
        return output, self._counts(docs, compact, output.tokens, named)

    @staticmethod
    def _counts(docs, compact, tokens, named) -> list[VisualTokenCounts]:
        """Each doc's token counts: ``tokens`` visual tokens at its scale ``named`` (see :meth:`_visual_tokens`)."""
        lengths = compact["attention_mask"].sum(1).tolist()  # compact prompts: one image token per image
        return [
            VisualTokenCounts(
                input_tokens=int(length) - len(doc.images) + int(visual), visual_tokens=int(visual), scale=scale
            )
            for doc, length, visual, scale in zip(docs, lengths, tokens, named)
        ]

    def _scores(self, docs, grids, sizes, compact, scales):
        """Continuation scores of a batch with every image at its scale, and each doc's token counts."""
        from m3.inference import continuation_ids, score_continuations

        prompts = [self.processor.prompt(doc.context, len(doc.images)) for doc in docs]
        extra = continuation_ids(self.processor, prompts, [doc.continuation for doc in docs])
        visual, named = self._visual_tokens(docs, grids, sizes, scales)
        self._check_context(docs, compact, visual, named, 0, extra)
        scores = score_continuations(self.model, self.processor, compact, extra, grids, sizes, scales)
        return list(zip(scores, self._counts(docs, compact, visual, named)))


class M3(_M3Base):
    """An M3 model answering at one scale: ``--model m3 --model_args pretrained=DIR,scale=S[,dtype=...]
    [,template=NAME]``.

    ``scale`` defaults to the checkpoint's ``m3_default_scale``; ``template`` overrides the model's conversation
    template (``plain``, ``vicuna_v1``, ``chat_template``). Greedy answers are the ones ``scripts/build_oracle.py``
    records at that scale.
    """

    MODEL_ID = "m3"
    MODEL_ARGS = {**_M3Base.MODEL_ARGS, "scale": Arg(int, low=1), "template": Arg(str, choices=TEMPLATE_NAMES)}

    def __init__(self, **model_args) -> None:
        super().__init__(**model_args)
        from m3.loading import load_m3_config, load_m3_model
        from m3.pooling import check_scale
        from m3.processing import M3Processor

        pretrained, scale = self.args["pretrained"], self.args["scale"]
        if scale is not None:  # against the checkpoint's grid, before its weights load
            check_scale(scale, load_m3_config(pretrained).grid_tokens)
        self.model = load_m3_model(pretrained, dtype=_dtype(self.args["dtype"], self.device)).to(self.device).eval()
        config = self.model.config
        self._processor = M3Processor.from_pretrained(pretrained, config=config, template=self.args["template"])
        self.scale = check_scale(scale if scale is not None else config.m3_default_scale, config.grid_tokens)

    @property
    def processor(self):
        return self._processor

    def _generate(self, docs, max_new_tokens, settings):
        grids, sizes, compact = self._encode(docs)
        output, counts = self._answer(docs, grids, sizes, compact, [self.scale] * len(grids), max_new_tokens, settings)
        return list(zip(output.answers, counts))

    def _score(self, docs):
        grids, sizes, compact = self._encode(docs)
        return self._scores(docs, grids, sizes, compact, [self.scale] * len(grids))


class M3Adaptive(_M3Base):
    """An :class:`adaptive.AdaptiveM3` folder: ``--model m3_adaptive --model_args pretrained=DIR[,threshold=T]
    [,price=P][,budget=B]``.

    ``threshold`` overrides the saved operating point with the threshold rule (the probability a scale must reach),
    ``price`` with the priced rule (accuracy per share of the largest scale's tokens); not both. ``budget`` caps the
    visual tokens of each image (AdaptiveM3's ``max_tokens``): the router picks among the scales within it. A
    one-image question is answered by :meth:`adaptive.AdaptiveM3.generate`; each image of a several-image question
    is routed on its own (with the question) and all are answered in one prompt; a text-only question needs no
    routing. Loglikelihood requests are scored at the routed scale of each image (a predictor that reads a probe
    answer cannot route them).
    """

    MODEL_ID = "m3_adaptive"
    MODEL_ARGS = {
        **_M3Base.MODEL_ARGS,
        "threshold": Arg(float, low=0, high=1),
        "budget": Arg(int, low=1),
        "price": Arg(float, low=0),
    }

    def __init__(self, **model_args) -> None:
        super().__init__(**model_args)
        from adaptive import AdaptiveM3
        from predictor.thresholds import operating_rule

        self.threshold, self.budget, self.price = self.args["threshold"], self.args["budget"], self.args["price"]
        if self.threshold is not None or self.price is not None:  # one rule, checked before the model loads
            operating_rule("threshold", None, None, at_threshold=self.threshold, at_price=self.price)
        dtype = _dtype(self.args["dtype"], self.device)
        self.adaptive = AdaptiveM3.from_pretrained(self.args["pretrained"], dtype=dtype)
        self.adaptive.model.to(self.device)
        self.model = self.adaptive.model
        self.routing: list[dict] = []  # per routed answer: scale, visual tokens, P(correct) per scale

    @property
    def processor(self):
        return self.adaptive.processor

    @staticmethod
    def _question(doc: Doc) -> str:
        from m3.templates import IMAGE_PLACEHOLDER

        return doc.context.replace(IMAGE_PLACEHOLDER, "").strip()

    def _routed_scales(self, docs: list[Doc], grids, sizes) -> list[int]:
        """Every image's routed scale, in prompt order (each image with its doc's question)."""
        questions = [self._question(doc) for doc in docs for _ in doc.images]
        if not questions:
            return []
        pil = [image for doc in docs for image in doc.images]
        return self.adaptive.route(pil, grids, sizes, questions, self.threshold, self.budget, self.price)

    @staticmethod
    def _one_image_in_front(doc: Doc) -> bool:
        """One image, its placeholder absent or opening the context: AdaptiveM3's own prompt layout."""
        from m3.templates import IMAGE_PLACEHOLDER

        found = doc.context.count(IMAGE_PLACEHOLDER)
        in_front = found == 1 and doc.context.lstrip().startswith(IMAGE_PLACEHOLDER)
        return len(doc.images) == 1 and (found == 0 or in_front)

    def _generate(self, docs, max_new_tokens, settings):
        single = [i for i, doc in enumerate(docs) if self._one_image_in_front(doc)]
        outputs: list = [None] * len(docs)
        if single:
            answers = self.adaptive.generate(
                [docs[i].images[0] for i in single], [self._question(docs[i]) for i in single],
                threshold=self.threshold, max_tokens=self.budget, max_new_tokens=max_new_tokens, price=self.price,
                **settings,
            )  # fmt: skip
            lengths = self._compact_lengths([docs[i] for i in single])
            for i, answer, length in zip(single, answers, lengths):
                visual = answer.visual_tokens
                route = {"scale": answer.scale, "visual_tokens": visual, "probabilities": answer.probabilities}
                self.routing.append(route)
                # the compact prompt holds one image token, expanded to the visual tokens
                counts = VisualTokenCounts(input_tokens=length - 1 + visual, visual_tokens=visual, scale=answer.scale)
                outputs[i] = (answer.answer, counts)
        rest = [i for i in range(len(docs)) if i not in set(single)]
        if rest:
            others = [docs[i] for i in rest]
            grids, sizes, compact = self._encode(others)
            scales = self._routed_scales(others, grids, sizes)
            output, counts = self._answer(others, grids, sizes, compact, scales, max_new_tokens, settings)
            for i, answer, count in zip(rest, output.answers, counts):
                outputs[i] = (answer, count)
        return outputs

    def _compact_lengths(self, docs: list[Doc]) -> list[int]:
        from m3.inference import compact_prompts

        compact = compact_prompts(self.processor, [self._question(doc) for doc in docs])
        return [int(n) for n in compact["attention_mask"].sum(1).tolist()]

    def _score(self, docs):
        grids, sizes, compact = self._encode(docs)
        return self._scores(docs, grids, sizes, compact, self._routed_scales(docs, grids, sizes))
