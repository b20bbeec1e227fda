"""import asyncio, statistics, sys, time, types, warnings

CHAIN = """

import asyncio
import statistics
import sys
import time
import types
import warnings

m = types.SimpleNamespace(N=100)
m.src = "".join(f"def x{i+1}(x{i}):\n    return x{i} + 1\n" for i in range(m.N))
m.src += "".join(
    f"async def s{i}(x0):\n    import asyncio\n    await asyncio.sleep(0.1)\n    return {i}\n"
    for i in range(10)
)
exec(m.src, m.__dict__)
N = m.N
FUNCS = [getattr(m, f"x{i+1}") for i in range(N)]
SLEEPERS = [getattr(m, f"s{i}") for i in range(10)]

def med(fn, reps=30):
    fn()
    ts = []
    for _ in range(reps):
        t = time.perf_counter(); fn(); ts.append(time.perf_counter() - t)
    return statistics.median(ts)

def raw():
    v = 0
    d = {}
    for f in FUNCS:
        v = f(v); d[f.__name__] = v
    return d

lib = sys.argv[1]
out = {}
out["raw_us_per_node"] = med(raw) / N * 1e6
if lib == "plait":
    from plait import Pipeline, node
    p = Pipeline([node(f, output_name=f.__name__) for f in FUNCS])
    chain = lambda: p.run(inputs={"x0": 0})["x100"]
    sp = Pipeline([node(f, output_name=f.__name__) for f in SLEEPERS])
    sleep = lambda: sp.run(inputs={"x0": 0})
    asleep = lambda: sp.arun(inputs={"x0": 0})
elif lib == "hypernodes":
    from hypernodes import Pipeline, node
    p = Pipeline(nodes=[node(output_name=f.__name__)(f) for f in FUNCS])
    chain = lambda: p.run(inputs={"x0": 0})["x100"]
    sp = Pipeline(nodes=[node(output_name=f.__name__)(f) for f in SLEEPERS])
    sleep = lambda: sp.run(inputs={"x0": 0})
    asleep = None
elif lib == "pipefunc":
    from pipefunc import Pipeline, pipefunc
    p = Pipeline([pipefunc(output_name=f.__name__)(f) for f in FUNCS])
    chain = lambda: p("x100", x0=0)
    sp = Pipeline([pipefunc(output_name=f.__name__)(f) for f in SLEEPERS])
    sleep = lambda: sp.run(output_name=[f.__name__ for f in SLEEPERS], kwargs={"x0": 0}, full_output=True)
    asleep = None
elif lib == "hamilton":
    from hamilton import driver
    mod = types.ModuleType("hchain"); sys.modules["hchain"] = mod; exec("".join(f"def x{i+1}(x{i}: int) -> int:\n    return x{i} + 1\n" for i in range(N)), mod.__dict__)
    dr = driver.Builder().with_modules(mod).build()
    chain = lambda: dr.execute(["x100"], inputs={"x0": 0})["x100"]
    amod = types.ModuleType("hsleep"); sys.modules["hsleep"] = amod; exec("import asyncio\n" + "".join(f"async def s{i}(x0: int) -> int:\n    await asyncio.sleep(0.1)\n    return {i}\n" for i in range(10)), amod.__dict__)
    try:
        sdr = driver.Builder().with_modules(amod).build()
        sleep = lambda: sdr.execute([f"s{i}" for i in range(10)], inputs={"x0": 0})
    except Exception as e:
        sleep = None; out["sync_driver_async_fns"] = repr(e)[:120]
    from hamilton import async_driver
    async def _a():
        adr = await async_driver.Builder().with_modules(amod).build()
        return await adr.execute([f"s{i}" for i in range(10)], inputs={"x0": 0})
    asleep = _a
elif lib == "daglite":
    from daglite import task, evaluate
    ts = [task(f) for f in FUNCS]
    def chain():
        fut = ts[0](x0=0)
        for t, f in zip(ts[1:], FUNCS[1:]):
            fut = t(**{f.__code__.co_varnames[0]: fut})
        return evaluate(fut)
    sleep = None; asleep = None

try:
    assert chain() == 100 or chain() is not None
    out["chain_us_per_node"] = med(chain, reps=20) / N * 1e6
except Exception as e:
    out["chain"] = repr(e)[:200]
if sleep:
    try:
        t = time.perf_counter(); r = sleep(); out["10x_async_sleep_0.1s_run_s"] = round(time.perf_counter() - t, 3)
    except Exception as e:
        out["async_run"] = repr(e)[:200]
if asleep:
    try:
        async def go():
            t = time.perf_counter(); await asleep(); return time.perf_counter() - t
        out["10x_async_sleep_0.1s_await_s"] = round(asyncio.run(go()), 3)
    except Exception as e:
        out["async_await"] = repr(e)[:200]
# sync run from code inside a running loop (a Jupyter cell calling a sync helper)
async def inloop():
    return chain()
try:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        asyncio.run(inloop()); out["sync_run_inside_running_loop"] = "works"
except Exception as e:
    out["sync_run_inside_running_loop"] = repr(e)[:200]
print(lib, out)
