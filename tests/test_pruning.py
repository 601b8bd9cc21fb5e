"""Student from teacher: kept layers carry the teacher's weights exactly, for Llama and GPT-2."""
import pytest
import tiny
import torch
from transformers import AutoModelForCausalLM

from workbench.cli import main as cli_main
from workbench.models.pruning import decoder_layers, evenly_spaced, student_from_teacher


@pytest.fixture(scope="module", params=["llama", "gpt2"])
def teacher(request, tmp_path_factory, tokenizer):
    folder = tmp_path_factory.mktemp("prune") / request.param
    save = tiny.save_llama if request.param == "llama" else tiny.save_gpt2
    save(folder, tokenizer, layers=6, hidden=32, seed=3)
    return folder


def test_evenly_spaced_keeps_first_and_last():
    assert evenly_spaced(6, 30) == [0, 6, 12, 17, 23, 29]
    assert evenly_spaced(1, 4) == [0] and evenly_spaced(4, 4) == [0, 1, 2, 3]
    with pytest.raises(ValueError, match=r"\[1, 4\]"):
        evenly_spaced(5, 4)


@pytest.mark.parametrize("keep", [3, [1, 4], [5]])
def test_kept_layers_equal_teacher_weights_exactly(teacher, keep, tmp_path):
    model = AutoModelForCausalLM.from_pretrained(teacher)
    student = student_from_teacher(model, keep)
    kept = student.config.pruned_from_layers
    assert kept == (evenly_spaced(keep, 6) if isinstance(keep, int) else sorted(keep))
    name, t_layers = decoder_layers(model)
    _, s_layers = decoder_layers(student)
    assert len(s_layers) == len(kept) == student.config.get_text_config().num_hidden_layers
    for j, i in enumerate(kept):
        t_state, s_state = t_layers[i].state_dict(), s_layers[j].state_dict()
        assert t_state.keys() == s_state.keys()
        assert all(torch.equal(t_state[k], s_state[k]) for k in t_state)
    # Everything outside the layer list (embeddings, final norm, LM head) is copied too.
    s_all = student.state_dict()
    outside = [k for k in model.state_dict() if not k.startswith(name + ".")]
    assert outside and all(torch.equal(model.state_dict()[k], s_all[k]) for k in outside)
    # Saved and reloaded through from_pretrained, it computes the same function.
    student.save_pretrained(tmp_path / "s")
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "s")
    ids = torch.randint(0, 300, (2, 12))
    assert torch.allclose(reloaded(ids).logits, student(ids).logits, atol=1e-6)
    assert reloaded.config.pruned_from_layers == kept


def test_keeping_all_layers_reproduces_the_teacher(teacher):
    model = AutoModelForCausalLM.from_pretrained(teacher)
    ids = torch.randint(0, 300, (1, 10))
    assert torch.allclose(student_from_teacher(model, 6)(ids).logits, model(ids).logits, atol=1e-6)


@pytest.mark.parametrize("keep,message", [([], "at least one"), ([0, 9], "out of range"), ([1, 1], "repeat")])
def test_bad_layer_lists_are_clear_errors(teacher, keep, message):
    with pytest.raises(ValueError, match=message):
        student_from_teacher(AutoModelForCausalLM.from_pretrained(teacher), keep)


def test_prune_command(teacher, tmp_path, capsys):
    assert cli_main(["prune", str(teacher), str(tmp_path / "out"), "--layers", "0,5"]) == 0
    assert "kept layers [0, 5] of 6" in capsys.readouterr().out
    student = AutoModelForCausalLM.from_pretrained(tmp_path / "out")
    assert student.config.get_text_config().num_hidden_layers == 2
    assert (tmp_path / "out" / "tokenizer.json").is_file()


def test_prune_command_refuses_a_bad_layer_list(teacher, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli_main(["prune", str(teacher), str(tmp_path / "out"), "--layers", "0,x"])
    assert exit_info.value.code == 2 and "comma-separated integers" in capsys.readouterr().err
    assert cli_main(["prune", str(teacher), str(tmp_path / "out"), "--layers", "0,9"]) == 1
    assert "out of range" in capsys.readouterr().err and not (tmp_path / "out").exists()
