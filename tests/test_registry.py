"""The strategy registry: registration, lookup, errors that list the valid names, and ``resolve``."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator

import pytest
from helpers import REPO

from spectral_lightning.errors import ConfigError
from spectral_lightning.parameterizations import (
    DCT,
    Dense,
    LowRank,
    Parameterization,
    available,
    get,
    register,
    resolve,
    unregister,
)

BUILTINS = ("dct", "dense", "lowrank")


class Toy(Parameterization):
    """A strategy for registry tests only (never built)."""

    def __init__(self, size: int = 1) -> None:
        self.size = size


@pytest.fixture
def toy() -> Iterator[str]:
    register("toy_registry_test")(Toy)
    try:
        yield "toy_registry_test"
    finally:
        unregister("toy_registry_test")


def test_available_lists_the_builtins_sorted() -> None:
    names = available()
    assert set(BUILTINS) <= set(names)
    assert names == sorted(names)
    assert get("dense") is Dense and get("dct") is DCT and get("lowrank") is LowRank
    assert (Dense.name, DCT.name, LowRank.name) == ("dense", "dct", "lowrank")


def test_importing_the_package_registers_the_builtins_without_importing_lightning() -> None:
    """In a fresh interpreter: the built-ins are registered by the import alone, and the package's plain-torch
    half (parameterizations, ``parameterize``, the models) does not import Lightning (``SpectralLM`` is imported
    on first use: every test that takes it from the package shows that half)."""
    code = (
        "import sys, spectral_lightning as s, spectral_lightning.parameterizations as p\n"
        "print(','.join(p.available()))\n"
        "print('lightning' in sys.modules, 'SpectralLM' in dir(s))"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    names, lightning = out.stdout.strip().splitlines()
    assert set(BUILTINS) <= set(names.split(","))
    assert lightning == "False True"


def test_register_get_and_unregister(toy: str) -> None:
    assert toy in available()
    assert get(toy) is Toy and Toy.name == toy
    assert resolve(toy) == Toy()
    register(toy)(Toy)  # registering the same class again (a module imported twice) is harmless
    unregister(toy)
    assert toy not in available()
    with pytest.raises(ValueError, match=toy):
        get(toy)


def test_duplicate_name_raises_and_lists_names(toy: str) -> None:
    class Other(Parameterization):
        pass

    for name in (toy, "dct"):
        with pytest.raises(ValueError) as err:
            register(name)(Other)
        message = str(err.value)
        assert f"{name!r}" in message and "already registered" in message
        assert all(builtin in message for builtin in BUILTINS)
    assert get(toy) is Toy and get("dct") is DCT  # nothing was overwritten


def test_unknown_name_raises_and_lists_registered_names() -> None:
    for lookup in (get, resolve):
        with pytest.raises(ConfigError) as err:
            lookup("dtc")
        message = str(err.value)
        assert "'dtc'" in message
        assert all(name in message for name in available())


@pytest.mark.parametrize("name", ["DCT", "my-basis", "1basis", "", "dct ", "_x", 3, None])
def test_bad_names_are_rejected(name: object) -> None:
    with pytest.raises(ValueError, match="lowercase identifier"):
        register(name)  # type: ignore[arg-type]
    assert name not in available()


def test_register_rejects_a_non_strategy_class() -> None:
    with pytest.raises(TypeError, match="Parameterization subclass"):
        register("not_a_strategy")(dict)
    assert "not_a_strategy" not in available()


def test_resolve_accepts_name_instance_and_class_path_dicts() -> None:
    assert resolve("dct") == DCT()
    assert resolve("LowRank") == LowRank()  # names are case-insensitive in configs
    instance = LowRank(rank=3)
    assert resolve(instance) is instance
    assert resolve({"class_path": "lowrank", "init_args": {"rank": 2}}) == LowRank(rank=2)
    assert resolve({"class_path": "dct"}) == DCT()
    dotted = {"class_path": "spectral_lightning.parameterizations.dct.DCT", "init_args": {"compression": 2.0}}
    assert resolve(dotted) == DCT(compression=2)
    assert resolve({"class_path": "spectral_lightning.LowRank", "init_args": {"rank": 4}}) == LowRank(rank=4)
    assert resolve(resolve(dotted)) == DCT(compression=2)
    assert resolve("spectral_lightning.parameterizations.dct.DCT") == DCT()  # a dotted path alone: defaults


def test_resolve_rejects_what_is_not_a_strategy() -> None:
    with pytest.raises(ConfigError, match="not a Parameterization subclass"):
        resolve({"class_path": "collections.OrderedDict"})
    with pytest.raises(ValueError) as err:
        resolve(42)  # type: ignore[arg-type]
    assert "42" in str(err.value) and all(name in str(err.value) for name in BUILTINS)
    with pytest.raises(ValueError, match="rank=0"):
        resolve({"class_path": "lowrank", "init_args": {"rank": 0}})  # options are validated too


def test_strategies_compare_and_print_by_options() -> None:
    assert DCT(compression=2) == DCT(compression=2.0)
    assert DCT(compression=2) != DCT(compression=2, selection="zigzag")
    assert DCT() != LowRank()
    assert hash(DCT(k=5)) == hash(DCT(k=5))
    assert repr(LowRank(rank=4)) == "LowRank(compression=4.0, rank=4, init_std=0.02)"
    assert DCT(selection="random", seed=3).options() == {
        "compression": 4.0,
        "k": None,
        "selection": "random",
        "seed": 3,
        "init_std": 0.02,
        # the support that moves during training (None: fixed, the paper's) and the execution path
        "update_every": None,
        "update_until": 0.75,
        "drop_fraction": 0.3,
        "grow": "gradient",
        "budget": "per_layer",
        "path": "auto",
        "grow_window": 1,
    }
