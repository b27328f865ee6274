"""`llavakit align`: boxes → the tower's grid, word targets, the regression run and its artifact."""

from __future__ import annotations

import json

import pytest
import torch
from PIL import Image

from llavakit.cli import main
from llavakit.errors import ConfigError, DataError
from llavakit.train.align import AlignConfig, align_loss, build_align_config, run_alignment, word_table
from llavakit.train.align_boxes import cell_centres, cell_words

NAMES = {1: "circle", 2: "square"}


def test_cell_centres_follow_the_image_mode():
    # 200 wide x 100 high on a 2x2 grid of a 224 input
    pad = cell_centres(200, 100, 2, "pad", 224)  # padded to 200x200: 50 px above and below
    assert pad == [(50.0, 0.0), (150.0, 0.0), (50.0, 100.0), (150.0, 100.0)]
    assert cell_centres(200, 100, 2, "resize", 224) == [(50.0, 25.0), (150.0, 25.0), (50.0, 75.0), (150.0, 75.0)]
    square = cell_centres(200, 100, 2, "square", 224)  # short side to 224, centre crop of the middle 100x100
    assert square[0] == pytest.approx((75.0, 25.0)) and square[3] == pytest.approx((125.0, 75.0))
    with pytest.raises(ConfigError, match="image mode"):
        cell_centres(10, 10, 2, "stretch", 224)


def test_cell_words_name_the_front_object_or_background():
    image = {"id": 0, "width": 100, "height": 100}
    anns = [{"category_id": 2, "bbox": [0, 0, 100, 50], "color": "blue"},   # the top half
            {"category_id": 1, "bbox": [0, 0, 50, 50], "color": "red"}]     # top left, in front (smaller)
    cfg = AlignConfig()
    assert cell_words(image, anns, NAMES, cfg, 2, "pad", 224) == [
        ("red", "circle"), ("blue", "square"), ("background",), ("background",)]
    sized = AlignConfig(words=["category"], background="nothing")
    assert cell_words(image, anns, NAMES, sized, 2, "pad", 224)[1:] == [("square",), ("nothing",), ("nothing",)]


def test_word_table_is_the_mean_of_the_words_embeddings(tiny_model):
    emb = tiny_model.language_model.get_input_embeddings().weight.detach()
    tok = tiny_model.tokenizer
    table = word_table([("red", "circle"), ("red",)], tok, emb)
    red = emb[tok(" red", add_special_tokens=False)["input_ids"]].mean(0)
    circle = emb[tok(" circle", add_special_tokens=False)["input_ids"]].mean(0)
    assert torch.allclose(table[1], red) and torch.allclose(table[0], (red + circle) / 2)


@pytest.fixture(scope="module")
def scenes(tmp_path_factory):
    from llavakit.datagen.scenes_cli import generate_scenes
    from llavakit.datagen.world import SceneConfig

    out = tmp_path_factory.mktemp("scenes")
    generate_scenes(out, 24, seed=0, cfg=SceneConfig(image_size=64, max_objects=3), progress=False)
    return out


def _cfg(scenes, tmp_path, **kw) -> AlignConfig:
    settings = dict(model="tiny-random", instances=str(scenes / "instances.json"),
                    image_folder=str(scenes / "images"), output_dir=str(tmp_path / "align"),
                    feature_cache_dir=str(tmp_path / "fc"), steps=60, batch_size=8, lr=3e-3,
                    heldout_fraction=0.25, progress=False)
    return AlignConfig(**{**settings, **kw})


def test_alignment_learns_the_targets_and_writes_a_projector_stage1_loads(scenes, tmp_path):
    from llavakit.model import load_model

    result = run_alignment(_cfg(scenes, tmp_path))
    assert result["images"] == 24 and result["heldout_images"] == 6
    assert result["final_loss"] < result["loss_every_50"][0]  # the regression learns
    assert "background" in result["targets"] and any(" " in t for t in result["targets"])  # "colour shape"
    assert result["cell_accuracy"]["object_cell_count"] > 0
    prov = json.loads((tmp_path / "align" / "projector" / "training.json").read_text(encoding="utf-8"))
    assert prov["stage"] == "align" and prov["image_folder"] == str((scenes / "images").resolve())
    # the artifact is a stage-1/2 projector: it loads onto the model and differs from a fresh init
    fresh = load_model("tiny-random")
    aligned = load_model("tiny-random", projector=result["projector"])
    a = dict(aligned.projector.named_parameters())
    assert any(not torch.equal(p, a[n]) for n, p in fresh.projector.named_parameters())
    # a rerun with the same settings (however the paths are spelled) is skipped; other settings are refused
    assert run_alignment(_cfg(scenes, tmp_path, output_dir=f"{tmp_path}/./align/")) == result
    (tmp_path / "align" / "projector" / "projector.safetensors").unlink()  # a lost artifact is made again
    assert run_alignment(_cfg(scenes, tmp_path))["final_loss"] == result["final_loss"]
    assert (tmp_path / "align" / "projector" / "projector.safetensors").is_file()
    with pytest.raises(ConfigError, match="other settings"):
        run_alignment(_cfg(scenes, tmp_path, background="nothing"))
    done = tmp_path / "align" / "align.json"  # a run recorded before a setting existed: its default counts
    record = json.loads(done.read_text(encoding="utf-8"))
    del record["config"]["size_field"]
    done.write_text(json.dumps(record), encoding="utf-8")
    assert run_alignment(_cfg(scenes, tmp_path))["final_loss"] == result["final_loss"]


def test_contrastive_term_asks_each_cell_to_be_nearest_its_own_words():
    table = torch.tensor([[1.0, 0.0, 0.0], [0.8, 0.6, 0.0], [0.0, 0.0, 1.0]])  # rows 0 and 1 close, 2 far
    ids = torch.tensor([[0, 2]])
    regression = AlignConfig(contrastive_weight=0.0)
    both = AlignConfig(contrastive_weight=0.5, temperature=0.1)
    exact = table[ids].clone()
    # the regression term is zero at the targets; the contrastive one is the cross-entropy of cosine logits
    assert align_loss(exact, ids, table, regression).item() == pytest.approx(0.0, abs=1e-6)
    logits = torch.nn.functional.normalize(exact, dim=-1)[0] @ torch.nn.functional.normalize(table, dim=-1).T / 0.1
    expected = 0.5 * torch.nn.functional.cross_entropy(logits, ids[0])
    assert align_loss(exact, ids, table, both).item() == pytest.approx(expected.item(), rel=1e-5)
    # a cell between its own row and a near neighbour: regression barely sees it, the contrastive term does
    between = exact.clone()
    between[0, 0] = (table[0] + table[1]) / 2
    gap = lambda cfg: (align_loss(between, ids, table, cfg) - align_loss(exact, ids, table, cfg)).item()  # noqa: E731
    assert gap(both) - gap(regression) > 2 * gap(regression) > 0  # the contrastive share dominates


def test_alignment_refuses_bad_settings_before_loading_a_model(scenes, tmp_path):
    with pytest.raises(ConfigError, match="instances file"):
        run_alignment(AlignConfig(instances=str(tmp_path / "no.json"), image_folder=str(tmp_path)))
    for bad, match in ((dict(lr=float("nan")), "lr"), (dict(steps=0), "steps"), (dict(words=[]), "words"),
                       (dict(heldout_fraction=1.0), "heldout_fraction"), (dict(cosine_weight=-1.0), "cosine_weight"),
                       (dict(contrastive_weight=float("inf")), "contrastive_weight"), (dict(temperature=0.0), "temperature")):
        with pytest.raises(ConfigError, match=match):
            run_alignment(_cfg(scenes, tmp_path, **bad))
    with pytest.raises(ConfigError, match=r"words \['shade'\].*fields"):
        run_alignment(_cfg(scenes, tmp_path, words=["shade", "category"]))
    with pytest.raises(ConfigError, match="steps"):
        build_align_config({}, ["steps=many"])
    broken = tmp_path / "broken.json"
    data = json.loads((scenes / "instances.json").read_text(encoding="utf-8"))
    data["annotations"][0]["bbox"] = [0, 0, float("nan"), 4]
    broken.write_text(json.dumps(data), encoding="utf-8")
    with pytest.raises(DataError, match="annotation .*bbox"):
        run_alignment(_cfg(scenes, tmp_path, instances=str(broken)))
    data = json.loads((scenes / "instances.json").read_text(encoding="utf-8"))
    data["images"][1]["width"] = 0
    broken.write_text(json.dumps(data), encoding="utf-8")
    with pytest.raises(DataError, match=r"image .*width and height > 0"):
        run_alignment(_cfg(scenes, tmp_path, instances=str(broken)))


def test_align_verb(scenes, tmp_path, capsys):
    out = tmp_path / "verb"
    assert main(["align", "--instances", str(scenes / "instances.json"), "--image-folder", str(scenes / "images"),
                 "--out", str(out), "--quiet", "model=tiny-random", "steps=5", "batch_size=4",
                 f"feature_cache_dir={tmp_path / 'fc'}"]) == 0
    printed = capsys.readouterr().out
    assert "cell accuracy" in printed and f"projector={out / 'projector'}" in printed
    assert main(["align", "--instances", str(scenes / "instances.json"), "--image-folder", str(tmp_path / "none"),
                 "--out", str(out)]) == 2
    assert "image_folder" in capsys.readouterr().err


def test_snapped_words_projector_aligns_then_emits_only_table_rows(scenes, tmp_path):
    from llavakit.interop.hf_llava import to_hf_llava
    from llavakit.model import build_model, get_preset, load_model, save_pretrained
    from llavakit.errors import LlavakitError

    cfg = get_preset("tiny-random")
    cfg.projector.snap = True
    base = save_pretrained(build_model(cfg), tmp_path / "snap-base")
    with pytest.raises(ConfigError, match="needs its word table"):
        load_model(str(base)).encode_images(torch.zeros(1, 3, 32, 32))
    result = run_alignment(_cfg(scenes, tmp_path, model=str(base)))
    assert result["snap_table_rows"] == len(result["targets"])
    model = load_model(str(base), projector=result["projector"])
    table = model.projector.table
    assert table.shape[0] == len(result["targets"])
    with torch.no_grad():
        tokens = model.encode_images(model.preprocess([Image.new("RGB", (40, 30), (200, 30, 30))]))
    rows = tokens.reshape(-1, tokens.shape[-1])
    assert all(any(torch.equal(r, t) for t in table) for r in rows)  # every token is a word row
    saved = save_pretrained(model, tmp_path / "snap-model")  # the table travels with the checkpoint
    assert torch.equal(load_model(str(saved)).projector.table, table)
    with pytest.raises(LlavakitError, match="no transformers Llava equivalent"):
        to_hf_llava(model)
    plain = load_model("tiny-random")
    with pytest.raises(ConfigError, match="snap is True there, False here"):
        from llavakit.model import load_projector

        load_projector(plain, result["projector"])


def test_stage1_is_refused_for_a_snapping_model(tmp_path):
    from llavakit.train.recipes import build_config
    from llavakit.train.config import validate

    data = tmp_path / "d.json"
    data.write_text("[]")
    with pytest.raises(ConfigError, match="stage 1 has nothing to train"):
        validate(build_config({"model": "nano-words", "output_dir": str(tmp_path / "o")},
                              overrides=[f"data.path={data}"], stage="1"))


def test_objects_projector_gets_its_word_tables_from_align_and_keeps_them(scenes, tmp_path):
    from llavakit.model.tokenizer import load_processor
    from llavakit.model import build_model, get_preset, load_model, save_pretrained

    cfg = get_preset("tiny-random")
    cfg.projector.snap, cfg.projector.objects = True, 10
    base = save_pretrained(build_model(cfg), tmp_path / "objects-base")
    assert load_processor(str(base)).num_image_tokens == 10  # the processor expands <image> to 10, not the grid
    result = run_alignment(_cfg(scenes, tmp_path, model=str(base)))
    sizes = result["object_size_cells"]
    assert sizes["small"] <= sizes["medium"] <= sizes["large"]  # counted on the annotations' boxes
    model = load_model(str(base), projector=result["projector"])
    assert model.num_image_tokens == 10
    with torch.no_grad():
        tokens = model.encode_images(model.preprocess([Image.new("RGB", (40, 30), (200, 30, 30))]))
    assert tokens.shape[:2] == (1, 10)
    words = model.projector.words
    assert all(any(torch.equal(r, w) for w in words) for r in tokens[0])  # every token is one word's row
    saved = save_pretrained(model, tmp_path / "objects-model")
    again = load_model(str(saved)).projector
    for name in ("words", "key_words", "size_words", "size_cells", "special", "table"):
        assert torch.equal(getattr(again, name), getattr(model.projector, name)), name
    unsized = run_alignment(_cfg(scenes, tmp_path, model=str(base), size_field="", output_dir=str(tmp_path / "a2")))
    assert unsized["object_size_cells"] == {}


def test_an_object_between_cell_centres_names_the_nearest_cell():
    image = {"id": 0, "width": 100, "height": 100}  # 2x2 grid: centres at 25 and 75
    small = {"category_id": 1, "bbox": [30, 30, 10, 10], "color": "red"}  # holds no centre; nearest is (25, 25)
    assert cell_words(image, [small], NAMES, AlignConfig(), 2, "pad", 224) == [
        ("red", "circle"), ("background",), ("background",), ("background",)]
    big = {"category_id": 2, "bbox": [0, 0, 50, 50], "color": "blue"}  # holds (25, 25): the small one yields
    assert cell_words(image, [small, big], NAMES, AlignConfig(), 2, "pad", 224)[0] == ("blue", "square")
