"""Each test here runs in a thread of its own, on a fresh Python stack.

On CPU the packed attention kernel runs in Triton's interpreter, Python calls many frames deep.
CPython 3.11 (and 3.12) frees a stack chunk each time a call returns across a chunk
boundary and maps a new one on the next call (python/cpython#142183, fixed for 3.13 on); under pytest's own frames
the interpreter's inner loop sat on such a boundary, and every kernel call took 3 to 5 times as
long (a million mmap/munmap pairs per test file). A fresh thread starts its stack from nothing,
as a script does. What each test asserts is unchanged; only the thread that runs it is.
"""

from __future__ import annotations

import inspect
import threading

import pytest


@pytest.hookimpl(tryfirst=True)
def pytest_pyfunc_call(pyfuncitem: pytest.Function) -> bool | None:
    function = pyfuncitem.obj
    if inspect.iscoroutinefunction(function):
        return None  # pytest-asyncio runs those
    arguments = {name: pyfuncitem.funcargs[name] for name in pyfuncitem._fixtureinfo.argnames}
    failure: list[BaseException] = []

    def run() -> None:
        try:
            function(**arguments)
        except BaseException as error:  # noqa: BLE001 (re-raised in the test's own thread below)
            failure.append(error)

    worker = threading.Thread(target=run, name=f"test:{pyfuncitem.name}")
    worker.start()
    worker.join()
    if failure:
        raise failure[0]
    return True
