from edgewise.measure.machine import accuracy_holds_for, cpu_flags, describe


def test_accuracy_holds_for_names_how_far_a_figure_carries():
    int8 = accuracy_holds_for("prune(amount=0.5)+int8(per_tensor=True)")
    assert "S8S8" in int8 and "emulated Haswell" in int8 and "Arm CPUs were not checked" in int8
    assert "any CPU" in accuracy_holds_for("distill(depth=0.5)+int4")


def test_the_machine_names_the_instruction_sets_that_choose_kernels():
    features = describe()["cpu_features"]
    assert set(features) <= cpu_flags() and all(f in features for f in ("avx2", "fma") if f in cpu_flags())
