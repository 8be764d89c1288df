import numpy as np
import pytest
import torch

from edgewise.compression import distill
from edgewise.errors import EdgewiseError
from edgewise.runtime.torch import predict
from edgewise.train import fit
from tests.conftest import TinyEncoder, tiny_classifier


def test_shallower_keeps_evenly_spaced_blocks_with_their_weights():
    teacher = TinyEncoder(depth=6)
    student = distill.shallower(teacher, 0.5)
    assert len(student.layers) == 3
    for kept, index in zip(student.layers, (1, 3, 5)):
        assert torch.equal(kept[0].weight, teacher.layers[index][0].weight)
    assert len(teacher.layers) == 6


def test_model_without_repeated_blocks_is_named():
    with pytest.raises(EdgewiseError, match="Sequential has no stack of repeated layers"):
        distill.shallower(tiny_classifier(), 0.5)


def test_distillation_brings_the_student_closer(encoder_task):
    teacher = encoder_task.model
    student = distill.shallower(teacher, 0.5)
    fidelity = lambda m: encoder_task.evaluate(lambda x: predict(m, x))  # noqa: E731
    before = fidelity(student)
    loss = distill.distill_loss(teacher, has_labels=False)
    fit(student, encoder_task.train, loss_fn=loss, epochs=15, lr=3e-3, show_progress=False)
    assert fidelity(student) > before + 0.05 and fidelity(student) > 0.95


def test_kd_loss_mixes_hard_labels_and_soft_targets(tiny_task):
    teacher = tiny_task.model
    x, y = tiny_task.train
    loss = distill.kd_loss(teacher, temperature=2.0, alpha=0.5)
    student = tiny_classifier()
    student.load_state_dict(teacher.state_dict())
    soft_only = distill.kd_loss(teacher, alpha=0.0)(student, x, torch.from_numpy(y))
    assert soft_only.item() == pytest.approx(0.0, abs=1e-6)  # identical student: no divergence
    assert loss(student, x, torch.from_numpy(y)).item() > 0  # the hard-label part remains
    with pytest.raises(EdgewiseError, match="distill match 'l1'"):
        distill.distill_loss(teacher, True, match="l1")


def test_embeddings_are_frozen_and_thawed_and_batches_get_teacher_outputs():
    from tests.conftest import TwoInputs
    model = TwoInputs()
    frozen = distill.frozen_embeddings(model)
    assert frozen == [model.embed.weight] and not model.embed.weight.requires_grad
    assert model.proj.weight.requires_grad
    batches = [({"input_ids": np.full((2, 3), i, np.int64), "attention_mask": np.ones((2, 3), np.int64)},)
               for i in range(3)]
    targets = distill.with_teacher_outputs(model, batches)
    assert len(targets) == 3 and all(t.shape == (2, 4) for _, t in targets)
    assert np.allclose(targets[1][1], predict(model, batches[1][0]))
