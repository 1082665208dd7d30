"""Adapter discovery (maskiou.attach): the entry points are listed once per process, a plugin is
imported only for a model that may belong to its framework, at most once, and a plugin that
raises anything at import is skipped with one warning while the others still work.

The plugins here are small modules written to a temporary folder; each one logs its import in
``discovery_log.IMPORTS`` before doing anything else, so the log is exactly what was imported.
"""

from __future__ import annotations

import sys
import textwrap
import warnings
from importlib.metadata import EntryPoint

import pytest
import torch
from torchvision.ops.misc import FrozenBatchNorm2d

import maskiou.attach as attach
from maskiou.attach import (
    UnknownFrameworkError,
    entry_point_may_handle,
    find_adapter,
    framework_adapter,
    model_packages,
)

ADAPTER = '''
class Adapter:
    name = "{name}"
    framework = "{framework}"
    capabilities = frozenset({{"load"}})

    def matches(self, model):
        return type(model).__module__.split(".")[0] == "{package}"

    def head_defaults(self, model):
        return {{"in_channels": 4, "num_classes": 3, "roi_size": 14}}

    def install(self, model, head, config):
        model.maskiou_head = head

    def load_detector(self, detector):
        raise NotImplementedError
'''

PLUGINS = {  # module -> its source; each logs its import first
    "fake_sp": ADAPTER.format(name="fake scipy", framework="scipy",
                              package="scipy"),
    "fake_broken": "raise OSError('read-only config folder')\n",
    "fake_missing": "import nopkgqq  # the framework this plugin is for is not installed\n",
    "fake_any": ADAPTER.format(name="fake any", framework="nopkgzz", package="nopkgzz"),
    "fake_tv": ADAPTER.format(name="fake torchvision", framework="torchvision",
                              package="torchvision"),
}
NAMES = {"fake_sp": "scipy-fake", "fake_broken": "broken-plugin",
         "fake_missing": "nopkgqq-seg", "fake_any": "nopkgzz-any", "fake_tv": "torchvision-fake"}


@pytest.fixture
def plugins(tmp_path, monkeypatch, fake_entry_points):
    """The five fake plugins on ``sys.path`` and in the entry-point group, in PLUGINS' order:
    returns (the import log, the listings of the group)."""
    (tmp_path / "discovery_log.py").write_text("IMPORTS = []\n")
    for module, source in PLUGINS.items():
        log = f"import discovery_log\ndiscovery_log.IMPORTS.append({module!r})\n"
        (tmp_path / f"{module}.py").write_text(log + textwrap.dedent(source))
    monkeypatch.syspath_prepend(str(tmp_path))
    listings = fake_entry_points(*[
        EntryPoint(NAMES[m], f"{m}:Adapter", attach.ENTRY_POINT_GROUP) for m in PLUGINS])
    import discovery_log

    yield discovery_log.IMPORTS, listings
    for name in ["discovery_log", *PLUGINS]:
        sys.modules.pop(name, None)


class ScipyLike(torch.nn.Module):
    """A model whose class says it comes from the package ``scipy`` (nothing imported)."""


ScipyLike.__module__ = "scipy.nn.fake"


def test_the_rule_reads_the_package_before_the_first_dash():
    tv = model_packages(FrozenBatchNorm2d(4))
    assert tv == {"torchvision", "torch", "builtins"}
    assert entry_point_may_handle("torchvision-maskrcnn", tv)
    # installed packages (maskiou's own dependencies, so installed everywhere), not the model's
    assert not entry_point_may_handle("numpy-yolo", tv)
    assert not entry_point_may_handle("scipy-rcnn", tv)
    assert entry_point_may_handle("mydetector", tv)  # no installed package of that name
    assert entry_point_may_handle("nopkgzz-seg", tv)
    assert entry_point_may_handle("scipy-yolo", model_packages(ScipyLike()))


def test_a_plugin_is_imported_only_for_its_frameworks_models_and_once(plugins):
    imports, listings = plugins
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        adapter = find_adapter(FrozenBatchNorm2d(4))
    assert adapter.name == "fake torchvision"
    # not the scipy plugin, listed first; those whose name is no package, in order
    assert imports == ["fake_broken", "fake_missing", "fake_any", "fake_tv"]
    assert "fake_sp" not in sys.modules
    # one warning, for the plugin that raised; none for the one whose framework is missing
    assert [str(w.message) for w in caught] == [
        "maskiou: the adapter entry point broken-plugin = fake_broken:Adapter (OSError: "
        "read-only config folder) failed to import; skipped (the other adapters still work)"]
    assert caught[0].category is RuntimeWarning

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert find_adapter(FrozenBatchNorm2d(2)) is adapter  # the same object, kept
        assert find_adapter(ScipyLike()).name == "fake scipy"
    assert caught == []  # nothing warns twice
    assert imports == ["fake_broken", "fake_missing", "fake_any", "fake_tv", "fake_sp"]
    assert listings == [attach.ENTRY_POINT_GROUP]  # the group listed once


def test_no_adapter_names_what_was_not_imported_and_what_failed(plugins):
    imports, _ = plugins
    with pytest.warns(RuntimeWarning, match="broken-plugin"), \
            pytest.raises(TypeError) as e:
        find_adapter(torch.nn.Linear(1, 1))
    msg = str(e.value)
    assert "no adapter for torch.nn.modules.linear.Linear. Adapters available: fake any. " \
        "Not imported (for models of other packages): scipy-fake, torchvision-fake. " \
        "Entry points that failed to import: broken-plugin = fake_broken:Adapter (OSError: " \
        "read-only config folder); nopkgqq-seg = fake_missing:Adapter (ModuleNotFoundError: " \
        "No module named 'nopkgqq')." in msg
    assert imports == ["fake_broken", "fake_missing", "fake_any"]


def test_framework_adapter_imports_the_plugin_named_after_the_framework(plugins):
    imports, _ = plugins
    assert framework_adapter("scipy").name == "fake scipy"
    assert imports == ["fake_sp"]
    assert framework_adapter("torchvision", "load").name == "fake torchvision"
    assert imports == ["fake_sp", "fake_tv"]
    assert framework_adapter("nopkgzz").name == "fake any"
    assert imports == ["fake_sp", "fake_tv", "fake_any"]


def test_framework_adapter_of_an_unknown_framework_lists_every_plugin(plugins):
    imports, _ = plugins
    with pytest.warns(RuntimeWarning, match="broken-plugin"), \
            pytest.raises(UnknownFrameworkError) as e:
        framework_adapter("mmdet")
    assert str(e.value).startswith(
        "no adapter loads mmdet models (frameworks available: nopkgzz, scipy, "
        "torchvision). Entry points that failed to import: broken-plugin = fake_broken:Adapter "
        "(OSError: read-only config folder); nopkgqq-seg")
    assert sorted(imports) == sorted(PLUGINS)


def test_a_plugin_that_raises_at_import_leaves_the_others_working(plugins):
    imports, _ = plugins
    with pytest.warns(RuntimeWarning, match="OSError: read-only config folder"):
        adapters = attach.available_adapters()
    assert [a.name for a in adapters] == ["fake scipy", "fake any", "fake torchvision"]
    model = attach.attach_maskiou_head(ScipyLike())
    assert model.maskiou_head.convs[0].in_channels == 5  # 4 RoI-feature channels + the mask
