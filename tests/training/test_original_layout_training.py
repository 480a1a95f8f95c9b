"""The seed's commands on a model folder in EasyAnimate's own layout; the result exports both ways and loads back,
and the run hands on output_dir/pipeline (the base model with the trained transformer in it)."""

import json
import shutil

import pytest
import torch
from diffusers import EasyAnimateTransformer3DModel

from easyanimate.models import load_model_spec
from easyanimate.models.loading import load_transformer
from easyanimate.models.pipeline import MendedEasyAnimateControlPipeline
from easyanimate.training.export import export, export_pipeline
from trainer_runs import CONFIGS, launch, metrics, seed_command

pytestmark = pytest.mark.integration

CASES = [("EasyAnimateV5.1 without deepspeed", "tiny_model_v51_original",
          "easyanimate_video_v5.1_magvit_qwen.yaml"),
         ("EasyAnimateV5 without deepspeed", "tiny_model_v5_original",
          "easyanimate_video_v5_magvit_multi_text_encoder.yaml")]


@pytest.mark.parametrize("title,model_fixture,yaml", CASES, ids=[c[0] for c in CASES])
def test_original_layout_folder_trains_and_exports_both_ways(title, model_fixture, yaml, request, demo_data,
                                                             tmp_path):
    model = request.getfixturevalue(model_fixture)
    output = tmp_path / "out"
    launch_flags, flags = seed_command(title, model=model, data=demo_data, output=output, steps=2)
    result = launch(launch_flags, flags)
    assert result.returncode == 0, result.stderr[-5000:]
    assert "original layout" in result.stderr
    assert json.loads((output / "config.json").read_text())["detected"]["model_layout"] == "original"
    assert len(metrics(output)) == 2
    checkpoint = output / "checkpoint-2"

    diffusers_folder = export(checkpoint, tmp_path / "diffusers-transformer")
    trained = EasyAnimateTransformer3DModel.from_pretrained(diffusers_folder)

    # Back into the user's own layout: the model folder with its transformer/ replaced, loaded strictly.
    original_model = tmp_path / "original-model"
    shutil.copytree(model, original_model)
    shutil.rmtree(original_model / "transformer")
    export(checkpoint, original_model / "transformer", layout="original")
    reloaded = load_transformer(original_model, load_model_spec(CONFIGS / yaml))
    trained_state, reloaded_state = trained.state_dict(), reloaded.state_dict()
    assert trained_state.keys() == reloaded_state.keys()
    assert all(torch.equal(trained_state[k], reloaded_state[k]) for k in trained_state)
    initial = load_transformer(model, load_model_spec(CONFIGS / yaml))
    assert not torch.equal(initial.proj_out.weight, trained.proj_out.weight)

    # The run's end product, and the same folder exported from the checkpoint: one load each, base parts linked.
    for pipeline in (output / "pipeline", export_pipeline(checkpoint, tmp_path / "exported-pipeline")):
        if "V5.1" in title:
            handed_on = MendedEasyAnimateControlPipeline.from_pretrained(pipeline).transformer
        else:  # two text encoders: EasyAnimate's layout (see README, Models)
            handed_on = load_transformer(pipeline, load_model_spec(CONFIGS / yaml))
        assert torch.equal(handed_on.proj_out.weight, trained.proj_out.weight)
        assert (pipeline / "vae" / "diffusion_pytorch_model.safetensors").is_symlink()
