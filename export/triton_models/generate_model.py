"""Triton Python-backend model: image bytes + prompt -> text, with the runtime's own generation loop.

Written into a repository by `pixdeploy triton` twice: as `pixdeploy` (decoupled: one response per
piece of text, then an empty final one) and as `pixdeploy_generate` (one response per request; the
requests of a dynamic batch that share prompt and sampling options are decoded together). The image
is letterboxed by `pixdeploy.folding`, exactly as `Pipeline` does; the encoder and decoder are the
repository's `image_encoder` and `decoder` models, called through BLS, so they batch and run wherever
their own configs put them.
"""

import json
import math
import os
import site
import sys
from collections import defaultdict
from pathlib import Path

# `pixdeploy serve` names the site folders of the Python that has pixdeploy installed; the backend's
# embedded interpreter only knows its base installation. A server whose Python has pixdeploy needs none.
# They go first: a numpy in the base installation must not shadow the one pixdeploy was installed with.
_base_path = list(sys.path)
for _d in filter(None, os.environ.get("PIXDEPLOY_SITE_DIRS", "").split(os.pathsep)):
    site.addsitedir(_d)
sys.path[:] = [p for p in sys.path if p not in _base_path] + _base_path

import numpy as np  # noqa: E402
import triton_python_backend_utils as pb_utils  # noqa: E402
from pixdeploy.runtime.backends import Runner, declared_inputs  # noqa: E402
from pixdeploy.runtime.bundle import Bundle  # noqa: E402
from pixdeploy.runtime.pipeline import Pipeline  # noqa: E402
from pixdeploy.runtime.sampling import Sampling  # noqa: E402

from pixdeploy.config import EOS_ID  # noqa: E402
from pixdeploy.errors import PixdeployError  # noqa: E402
from pixdeploy.sequence import collect_until_stop  # noqa: E402

MAX_NEW_TOKENS_LIMIT = 4096  # a bound on one request's work; the context length bounds it further


class BlsRunner(Runner):
    """The runtime's runner contract (feed checked against the manifest's signature), answered by another
    model of this server."""

    def __init__(self, model: str, signature, keep=frozenset()):
        self.model, self.inputs = model, declared_inputs(signature)
        self.output_names, self.keep = list(signature.outputs), frozenset(keep)

    def infer_impl(self, feed: dict) -> dict:
        inputs = [pb_utils.Tensor(k, np.ascontiguousarray(v)) for k, v in feed.items()]
        # Outputs in CPU memory: a KIND_GPU model (onnxruntime, TensorRT) otherwise hands back GPU tensors,
        # which as_numpy() refuses. Copying the cache through the host costs a round trip per step; keeping it
        # on the GPU (DLPack) would need a device array library in the loop, which the torch-free runtime has not.
        kwargs = {"preferred_memory": pb_utils.PreferredMemory(pb_utils.TRITONSERVER_MEMORY_CPU, 0)} \
            if hasattr(pb_utils, "PreferredMemory") else {}
        response = pb_utils.InferenceRequest(model_name=self.model, requested_output_names=self.output_names,
                                             inputs=inputs, **kwargs).exec()
        if response.has_error():
            raise PixdeployError(f"{self.model}: {response.error().message()}")
        out = {}
        for n in self.output_names:
            tensor = pb_utils.get_output_tensor_by_name(response, n)
            if not tensor.is_cpu():
                raise PixdeployError(f"{self.model}: output {n} arrived in GPU memory; this Triton's Python "
                                     "backend cannot be asked for CPU outputs (needs 23.05 or later)")
            out[n] = np.array(tensor.as_numpy())  # copied: the array views memory released with the response
        return out


def bls_pipeline(bundle: Bundle) -> Pipeline:
    """The runtime's Pipeline over BLS calls to this repository's two graph models."""
    keep = {p.present for p in bundle.cache_pairs()}
    return Pipeline.from_runners(bundle, BlsRunner("image_encoder", bundle.signatures["image_encoder"]),
                                 BlsRunner("decoder", bundle.signatures["decoder"], keep))


def load_loop_bundle(path: Path) -> Bundle:
    """The bundle files the loop needs (the graphs live in their own models): read unverified, as the graphs
    are not here; the tokenizer and word-embedding table are still read only through their checksums."""
    bundle = Bundle(path, verify=False)
    bundle.text_embeddings(), bundle.tokenizer  # noqa: B018 -- checked now, not at the first request
    return bundle


def scalar(request, name: str, default=None):
    tensor = pb_utils.get_input_tensor_by_name(request, name)
    if tensor is None:
        if default is None:
            raise PixdeployError(f"input {name} is required")
        return default
    values = tensor.as_numpy().reshape(-1)
    if values.size != 1:
        raise PixdeployError(f"input {name} must hold one value (one image per request), got {values.size}")
    return values[0]


def parse(request) -> tuple[bytes, str, dict]:
    """One request -> (image bytes, prompt, sampling options); every bad value is one PixdeployError."""
    image = scalar(request, "IMAGE")
    if not isinstance(image, bytes):
        raise PixdeployError("IMAGE must be the bytes of an image file")
    try:
        prompt = bytes(scalar(request, "PROMPT", b"")).decode("utf-8")
    except UnicodeDecodeError:
        raise PixdeployError("PROMPT is not valid UTF-8") from None
    kw = {"max_new_tokens": int(scalar(request, "MAX_NEW_TOKENS", np.int32(32))),
          "temperature": float(scalar(request, "TEMPERATURE", np.float32(0))),
          "top_k": int(scalar(request, "TOP_K", np.int32(0))),
          "top_p": float(scalar(request, "TOP_P", np.float32(1))),
          "seed": int(scalar(request, "SEED", np.int64(0)))}
    if not 1 <= kw["max_new_tokens"] <= MAX_NEW_TOKENS_LIMIT:
        raise PixdeployError(f"MAX_NEW_TOKENS must be within 1..{MAX_NEW_TOKENS_LIMIT}")
    if not math.isfinite(kw["temperature"]) or kw["temperature"] < 0:
        raise PixdeployError("TEMPERATURE must be a finite number >= 0")
    if not math.isfinite(kw["top_p"]) or not 0 < kw["top_p"] <= 1:
        raise PixdeployError("TOP_P must be within (0, 1]")
    if kw["top_k"] < 0:
        raise PixdeployError("TOP_K must be >= 0")
    if not 0 <= kw["seed"] <= 2**63 - 1:
        raise PixdeployError("SEED must be within 0..2**63-1")
    return bytes(image), prompt, kw


def text_response(text: str, batched: bool):
    arr = np.array([text.encode("utf-8")], dtype=np.object_)
    return pb_utils.InferenceResponse([pb_utils.Tensor("TEXT", arr.reshape(1, 1) if batched else arr)])


def error_response(message: str):
    return pb_utils.InferenceResponse(error=pb_utils.TritonError(message))


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        self.decoupled = pb_utils.using_decoupled_model_transaction_policy(config)
        self.batched = config.get("max_batch_size", 0) > 0
        folder = Path(args["model_repository"]) / args["model_version"]
        self.pipe = bls_pipeline(load_loop_bundle(folder / config["parameters"]["bundle"]["string_value"]))

    def execute(self, requests):
        if self.decoupled:
            for request in requests:
                self.stream(request)
            return None
        return self.generate(requests)

    def stream(self, request) -> None:
        sender = request.get_response_sender()
        try:
            image, prompt, kw = parse(request)
            for piece in self.pipe.stream(image, prompt, **kw):
                sender.send(text_response(piece, batched=False))
        except PixdeployError as e:
            sender.send(error_response(str(e)), flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
            return
        sender.send(flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)

    def generate(self, requests):
        responses = [None] * len(requests)
        groups = defaultdict(list)  # requests that can share one decode: same prompt and options
        for i, request in enumerate(requests):
            try:
                image, prompt, kw = parse(request)
                rgb, size = self.pipe.preprocess([image])
            except PixdeployError as e:
                responses[i] = error_response(str(e))
                continue
            groups[(prompt, tuple(sorted(kw.items())))].append((i, rgb, size))
        for (prompt, kw), members in groups.items():
            try:
                texts = self.decode_group(prompt, dict(kw), members)
            except PixdeployError as e:
                texts = [e] * len(members)
            for (i, _, _), text in zip(members, texts):
                responses[i] = error_response(str(text)) if isinstance(text, Exception) else text_response(
                    text, self.batched)
        return responses

    def decode_group(self, prompt: str, kw: dict, members: list) -> list:
        """`Pipeline.generate_batch` for images already letterboxed one by one."""
        rgb = np.concatenate([m[1] for m in members])
        sizes = np.concatenate([m[2] for m in members])
        steps = self.pipe.decode_steps(self.pipe.embed_letterboxed(rgb, sizes), self.pipe.prompt_ids(prompt),
                                      Sampling(**kw))
        return [self.pipe.tokenizer.decode(ids) for ids in collect_until_stop(steps, len(members), (EOS_ID,))]
