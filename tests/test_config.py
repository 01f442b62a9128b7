import pytest
import torch

from pixdeploy.config import PRESETS, ModelConfig, preset
from pixdeploy.errors import ConfigError
from pixdeploy.model import PixTokenLM


def count_params(cfg):
    with torch.device("meta"):
        return PixTokenLM(cfg).num_params()


def test_paper_preset_is_the_papers_configuration():
    cfg = preset("paper-120m")
    assert (cfg.dim, cfg.n_heads, cfg.n_kv_heads, cfg.n_layers, cfg.image_layers) == (768, 12, 6, 12, 5)
    assert (cfg.mlp_hidden, cfg.fold, cfg.image_size, cfg.window, cfg.max_seq_len) == (2304, 16, 224, 16, 1024)
    assert cfg.rope_theta == 500000 and cfg.rope_llama31_scaling and cfg.norm_eps == 1e-5
    assert cfg.n_colors == 4096 and cfg.pixel_pad_id == 4096 and cfg.n_windows == 196


def test_paper_preset_has_120m_parameters():
    n = count_params(preset("paper-120m"))
    assert 108e6 <= n <= 132e6, n


@pytest.mark.parametrize("name", list(PRESETS))
def test_presets_are_valid_and_ordered_by_size(name):
    preset(name).validate()
    sizes = [count_params(preset(n)) for n in ("tiny", "small", "paper-120m")]
    assert sizes == sorted(sizes)


@pytest.mark.parametrize("change, message", [
    ({"window": 15}, "does not divide image_size"),
    ({"fold": 12}, "power of two"),
    ({"fold": 512}, "power of two"),
    ({"fold": 1}, "padding token"),
    ({"n_heads": 7}, "does not divide dim"),
    ({"n_kv_heads": 5}, "does not divide n_heads"),
    ({"dim": 0}, "positive integer"),
    ({"max_seq_len": 10}, "cannot hold one image"),
    ({"text_vocab": 3}, "special tokens"),
    ({"colour": 3}, "unknown config field"),
])
def test_invalid_values_are_rejected_with_one_clear_message(change, message):
    with pytest.raises(ConfigError, match=message):
        preset("tiny").replace(**change)


def test_unknown_preset():
    with pytest.raises(ConfigError, match="unknown preset 'huge'"):
        preset("huge")


def test_config_round_trips_through_dict():
    cfg = preset("small")
    assert ModelConfig.from_dict(cfg.to_dict()) == cfg


def test_sizes_read_from_a_file_have_documented_ranges_checked_before_allocation():
    """A damaged or hostile config (absurd widths, a context of millions) is refused before any allocation."""
    import pytest

    from pixdeploy.config import MAX_MODEL_BYTES, ModelConfig, preset
    from pixdeploy.errors import ConfigError

    with pytest.raises(ConfigError, match="dim must be at most 16384"):
        ModelConfig.from_dict({**preset("tiny").to_dict(), "dim": 10**9})
    with pytest.raises(ConfigError, match="GiB; at most 64 GiB"):
        preset("paper-120m").replace(max_seq_len=1 << 20, n_layers=40)
    assert preset("paper-120m").estimated_bytes() < MAX_MODEL_BYTES
