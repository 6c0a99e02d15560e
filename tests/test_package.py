"""The package's public names stay the API functions whatever else has been imported."""

from __future__ import annotations


def test_api_functions_are_not_shadowed_by_subpackages():
    import tunesmith
    import tunesmith.evaluate.report  # noqa: F401  (the subpackages share these names)
    import tunesmith.train.loop  # noqa: F401

    assert callable(tunesmith.train) and callable(tunesmith.evaluate)
    assert tunesmith.train.__doc__.startswith("Runs the whole pipeline")
    assert tunesmith.Config.__name__ == "Config"
