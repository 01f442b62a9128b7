"""The graph signatures a manifest records, checked against the config and against each other: what a graph takes
and gives, and the decoder's KV-cache pairs. A manifest edit alone must not change answers, so every record is
held to the graphs it describes (names, order, dtypes, shapes within the config's bounds) before anything is
sized from it; the runners then hold the graphs themselves to these records."""

from __future__ import annotations

from pixdeploy.runtime.bundle.layout import GRAPHS, BundleError
from pixdeploy.runtime.bundle.records import DTYPES, MAX_DIMS, CachePair, GraphSignature, RecordError, is_symbol

from pixdeploy.text import printable

STEP_INPUTS = ("embeds", "input_pos")  # the decoder's inputs that are not a past cache
STEP_OUTPUTS = ("logits",)


def read_signatures(root, graphs: dict, cfg) -> dict[str, GraphSignature]:
    """graph -> its typed signature; every tensor a dtype the runtimes know and a shape of at most 8 dims, each a
    symbol or an integer no larger than the config's largest size (a shape of 10**15 is no model's)."""
    bound = max(cfg.max_seq_len, cfg.image_size, cfg.dim, cfg.vocab_out, cfg.mlp_hidden, cfg.n_windows, 3)
    out = {}
    for graph in GRAPHS:
        entry = graphs.get(graph)
        if not isinstance(entry, dict):
            raise BundleError(f"damaged bundle {root}: manifest.json records no graph {graph}")
        for io in ("inputs", "outputs"):
            tensors = entry.get(io)
            if not isinstance(tensors, dict) or not tensors:
                raise BundleError(f"damaged bundle {root}: graph {graph} records no {io}")
            for name, t in tensors.items():
                _check_tensor(root, f"graph {graph}'s {io[:-1]} {printable(repr(name))}", t, bound)
        try:
            out[graph] = GraphSignature.from_dict(entry, graph)
        except RecordError as e:
            raise BundleError(f"damaged bundle {root}: {printable(str(e))}") from None
    _check_against_config(root, out, cfg)
    return out


def _check_tensor(root, what: str, t, bound: int) -> None:
    """One recorded tensor, held to the config's largest size (a `TensorSpec` alone allows dims up to 2**31), before
    the record is parsed, so a refusal names the graph's tensor."""
    where = f"damaged bundle {root}: {what}"
    if not isinstance(t, dict) or not isinstance(t.get("dtype"), str) or t["dtype"] not in DTYPES:
        dtype = t.get("dtype") if isinstance(t, dict) else None
        raise BundleError(f"{where} has dtype {printable(repr(dtype))[:60]}, not one of {', '.join(DTYPES)}")
    shape = t.get("shape")
    if not isinstance(shape, list) or len(shape) > MAX_DIMS or not all(
            is_symbol(d) or (isinstance(d, int) and not isinstance(d, bool) and 0 <= d <= bound) for d in shape):
        raise BundleError(f"{where} has shape {printable(repr(shape))[:80]}, not dims of at most "
                          f"{bound} (the config's largest size) or symbols")


def _check_against_config(root, signatures: dict, cfg) -> None:
    """The recorded signatures must be the ones this config gives: a manifest whose config was edited away from
    its graphs is refused here, not when a shape mismatch surfaces mid-run."""
    S, W, C = cfg.image_size, cfg.n_windows, cfg.dim
    expect = {
        ("image_encoder", "inputs", "images"): ("images", S, S, 3),
        ("image_encoder", "inputs", "sizes"): ("images", 2),
        ("image_encoder", "outputs", "window_embeddings"): ("images", W, C),
        ("decoder", "inputs", "embeds"): ("batch", "tokens", C),
        ("decoder", "outputs", "logits"): ("batch", cfg.vocab_out),
    }
    for (graph, io, tensor), shape in expect.items():
        got = getattr(signatures[graph], io).get(tensor)
        recorded = None if got is None else list(got.shape)
        if recorded != list(shape):
            raise BundleError(f"damaged bundle {root}: manifest config does not match graph {graph}'s "
                              f"{tensor} (recorded {printable(repr(recorded))}, config gives {list(shape)})")


def check_cache_pairs(root, decoder: GraphSignature) -> list[CachePair]:
    """The decoder's cache pairs as recorded at export, each exactly the tensors it joins, together pairing the
    i-th past input with the i-th present output: a pair that feeds one layer's cache to another is refused."""
    if not decoder.cache:
        raise BundleError(f"damaged bundle {root}: the decoder entry records no KV-cache pairs")
    pairs = list(decoder.cache)
    for pair in pairs:
        past, present = decoder.inputs.get(pair.past), decoder.outputs.get(pair.present)
        if past is None or present is None:
            raise BundleError(f"damaged bundle {root}: KV-cache pair {printable(pair.past)} -> "
                              f"{printable(pair.present)} is not among the decoder's inputs and outputs")
        # The pair is exactly the tensors it joins: one dtype, one shape (its batch the only symbol).
        if not (past.dtype == present.dtype == pair.dtype and past.shape == present.shape == pair.shape
                and pair.shape[:1] == ("batch",) and all(isinstance(d, int) for d in pair.shape[1:])):
            raise BundleError(f"damaged bundle {root}: KV-cache pair {printable(pair.past)} -> "
                              f"{printable(pair.present)} records {printable(pair.dtype)}"
                              f"{printable(list(pair.shape))}, not the dtype and shape of both tensors it joins")
    # Every decoder input but the step's own is a past, every output but the logits a present, each in exactly
    # one pair, in the recorded order (the list itself may come in any order; the runners check the recorded
    # order against the graph itself).
    pasts = [n for n in decoder.inputs if n not in STEP_INPUTS]
    presents = [n for n in decoder.outputs if n not in STEP_OUTPUTS]
    got = [(p.past, p.present) for p in pairs]
    if len(set(got)) != len(got) or set(got) != set(zip(pasts, presents)) or len(pasts) != len(presents):
        raise BundleError(f"damaged bundle {root}: the decoder's KV-cache pairs {printable(got[:4])[:160]} do not "
                          "pair its cache inputs with its cache outputs in the graph's order")
    return pairs
