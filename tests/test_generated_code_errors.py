"""A failure inside generated C is our bug, not the user's: it must not be reported as a one-line
user error (exit 2) but as an internal error (exit 70). A missing tool stays a user error."""
from __future__ import annotations

import pytest
from qplugin_zoo.kernel_bench import conv_module

from tvm_qplugin import cli
from tvm_qplugin.errors import QPluginError
from tvm_qplugin.export import harness
from tvm_qplugin.export.c_package import write_c_package
from tvm_qplugin.export.toolchain import GeneratedCodeError, ToolchainError, which


@pytest.fixture(scope="module")
def broken_package(tmp_path_factory):
    pkg = tmp_path_factory.mktemp("broken") / "pkg"
    mod, _ = conv_module(c=8, o=8, hw=4)
    write_c_package(mod, pkg)
    with open(pkg / "model.c", "a") as f:
        f.write("\nthis is not C;\n")  # what a code-generation bug looks like to the compiler
    return pkg


def test_c_that_does_not_compile_is_a_generated_code_error(broken_package, tmp_path):
    with pytest.raises(GeneratedCodeError, match="failed to build the C package") as e:
        harness.build_host(broken_package, tmp_path / "build", sanitize=False)
    assert not isinstance(e.value, QPluginError)


def test_generated_code_error_exits_70_through_the_cli(broken_package, tmp_path, monkeypatch, capsys):
    def fail(_args):
        harness.build_host(broken_package, tmp_path / "b", sanitize=False)

    monkeypatch.setattr(cli, "cmd_targets", fail)
    assert cli.main(["targets"]) == cli.EXIT_INTERNAL_ERROR
    err = capsys.readouterr().err
    assert "internal error: GeneratedCodeError" in err and len(err.splitlines()) == 1


def test_a_missing_tool_is_a_user_error():
    with pytest.raises(ToolchainError, match="not found on PATH") as e:
        which("no-such-cross-gcc")
    assert isinstance(e.value, QPluginError)


def test_verifying_a_package_leaves_no_temporary_build_folder(tmp_path, monkeypatch):
    """The harness's builds for a verification go to a temporary folder that is removed (they used
    to pile up under /tmp, one per compile)."""
    import tempfile

    from tvm_qplugin.export import verify_c_package
    from tvm_qplugin.reference import ReferenceInterpreter

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    mod, x = conv_module(c=8, o=8, hw=4)
    write_c_package(mod, tmp_path / "pkg")
    want = ReferenceInterpreter(mod).run("main", x)
    res = verify_c_package(tmp_path / "pkg", "host", [[x]], expected=[want], count=False)
    assert res["bit_exact"], res
    assert list((tmp_path / "tmp").iterdir()) == []
