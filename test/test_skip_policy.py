"""`make test` (PRUNE_STRICT_SKIPS=1, hence CI) fails on a skipped test or module unless the reason is allowed."""

from pathlib import Path

pytest_plugins = ["pytester"]

CONFTEST = Path(__file__).with_name("conftest.py")


def test_a_skip_fails_the_strict_run_unless_its_reason_is_allowed(pytester, monkeypatch):
    pytester.makeconftest(CONFTEST.read_text())
    # in a folder of its own: launch_testing's collection hook imports modules while collecting their folder, so
    # a module-level importorskip skips the whole folder (all of test/ once: every test skipped, the run green)
    pytester.mkpydir("sub").joinpath("test_module_skip.py").write_text(
        'import pytest\npytest.importorskip("no_such_module_1f3a")\n\ndef test_a():\n    pass\n')
    pytester.makepyfile(
        test_function_skip='import pytest\n\ndef test_b():\n    pytest.importorskip("no_such_module_2b4c")\n',
        test_allowed='import pytest\n\n@pytest.mark.skipif(True, reason="a CUDA provider is present")\n'
                     'def test_c():\n    pass\n',
        test_passes="def test_d():\n    pass\n")
    monkeypatch.setenv("PRUNE_STRICT_SKIPS", "1")
    strict = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    strict.assert_outcomes(passed=1, skipped=3)
    assert strict.ret == 1
    section = strict.stdout.str().split("unexpected skips", 1)[1]
    assert "sub" in section and "no_such_module_1f3a" in section
    assert "test_function_skip.py::test_b" in section and "no_such_module_2b4c" in section
    assert "test_allowed" not in section

    monkeypatch.delenv("PRUNE_STRICT_SKIPS")
    assert pytester.runpytest_subprocess("-p", "no:cacheprovider").ret == 0   # a bare pytest run: skips are skips

    pytester.path.joinpath("sub", "test_module_skip.py").unlink()
    pytester.path.joinpath("test_function_skip.py").unlink()
    monkeypatch.setenv("PRUNE_STRICT_SKIPS", "1")
    assert pytester.runpytest_subprocess("-p", "no:cacheprovider").ret == 0   # only the allowed skip is left
