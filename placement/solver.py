"""HiGHS for the placement MILPs: time limit, relative gap, an optional start vector and a (time, primal, dual) trace.

scipy.optimize.milp has neither a start vector nor a progress callback; HiGHS itself has both. They are reached
through ``highspy`` when it is installed, else through the same HiGHS build that scipy ships
(``scipy.optimize._highspy``, present since scipy 1.15), else the solve falls back to ``scipy.optimize.milp``
without a start and with the trace holding only the final point.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy.optimize import Bounds, LinearConstraint, milp
from scipy.sparse import csr_matrix


@dataclass(frozen=True, eq=False)
class MilpModel:
    """min cost·x  s.t.  lo ≤ A x ≤ hi,  lb ≤ x ≤ ub,  x_i integer where ``integrality[i]`` = 1."""

    cost: np.ndarray
    matrix: csr_matrix
    lo: np.ndarray
    hi: np.ndarray
    integrality: np.ndarray
    lb: np.ndarray
    ub: np.ndarray


@dataclass(frozen=True, eq=False)
class SolveResult:
    """The incumbent (None if none), its objective, HiGHS's dual bound and relative gap, and the status."""

    x: np.ndarray | None
    objective: float
    bound: float
    gap: float
    optimal: bool
    infeasible: bool
    message: str
    backend: str


def highs_module() -> Any | None:
    """The HiGHS Python bindings: ``highspy``'s, else scipy's vendored copy; None when neither is importable."""
    for name in ("highspy._core", "scipy.optimize._highspy._core"):
        try:
            return importlib.import_module(name)
        except ImportError:
            continue
    return None


def relative_gap(objective: float, bound: float) -> float:
    """HiGHS's relative gap: (primal − dual) / |primal| (0 when both are 0)."""
    if not np.isfinite(objective) or not np.isfinite(bound):
        return float("inf")
    return 0.0 if objective == bound else abs(objective - bound) / max(abs(objective), 1e-12)


def solve_model(model: MilpModel, time_limit_s: float, mip_rel_gap: float = 1e-4, start: np.ndarray | None = None,
                trace: list[tuple[float, float, float]] | None = None) -> SolveResult:
    """Solve with HiGHS (single-threaded as HiGHS's MIP is); ``start`` is handed to HiGHS as a first incumbent."""
    h = highs_module()
    if h is None:
        return _solve_scipy(model, time_limit_s, mip_rel_gap, trace)
    return _solve_highs(h, model, time_limit_s, mip_rel_gap, start, trace)


def _solve_scipy(model: MilpModel, time_limit_s: float, mip_rel_gap: float,
                 trace: list[tuple[float, float, float]] | None) -> SolveResult:
    res = milp(model.cost, constraints=LinearConstraint(model.matrix, model.lo, model.hi),
               integrality=model.integrality, bounds=Bounds(model.lb, model.ub),
               options={"time_limit": time_limit_s, "mip_rel_gap": mip_rel_gap})
    objective = float(res.fun) if res.x is not None else float("nan")
    bound = float(getattr(res, "mip_dual_bound", np.nan) or objective)
    gap = float(getattr(res, "mip_gap", 0.0) or 0.0)
    if trace is not None and res.x is not None:
        trace.append((time_limit_s if res.status == 1 else float("nan"), objective, bound))
    return SolveResult(None if res.x is None else np.asarray(res.x), objective, bound, gap, res.status == 0,
                       res.status == 2, str(res.message), "scipy.optimize.milp")


def _solve_highs(h: Any, model: MilpModel, time_limit_s: float, mip_rel_gap: float, start: np.ndarray | None,
                 trace: list[tuple[float, float, float]] | None) -> SolveResult:
    csc = model.matrix.tocsc()
    n, m = model.cost.size, model.lo.size
    lp = h.HighsLp()
    lp.num_col_, lp.num_row_ = n, m
    lp.a_matrix_.num_col_, lp.a_matrix_.num_row_ = n, m
    lp.a_matrix_.format_ = h.MatrixFormat.kColwise
    lp.a_matrix_.start_ = csc.indptr.astype(np.int32)
    lp.a_matrix_.index_ = csc.indices.astype(np.int32)
    lp.a_matrix_.value_ = csc.data.astype(float)
    lp.col_cost_ = model.cost.astype(float)
    lp.col_lower_, lp.col_upper_ = model.lb.astype(float), model.ub.astype(float)
    lp.row_lower_, lp.row_upper_ = model.lo.astype(float), model.hi.astype(float)
    lp.integrality_ = [h.HighsVarType(int(i)) for i in model.integrality]
    highs = h._Highs() if hasattr(h, "_Highs") else h.Highs()
    highs.setOptionValue("output_flag", False)
    highs.setOptionValue("time_limit", float(time_limit_s))
    highs.setOptionValue("mip_rel_gap", float(mip_rel_gap))
    highs.passModel(lp)
    if trace is not None:
        def on_event(kind: int, message: str, out: Any, into: Any, user: object) -> None:
            point = (float(out.running_time), float(out.mip_primal_bound), float(out.mip_dual_bound))
            if not trace or point[1:] != trace[-1][1:]:
                trace.append(point)

        highs.setCallback(on_event, None)
        highs.startCallback(h.cb.HighsCallbackType.kCallbackMipImprovingSolution)
        highs.startCallback(h.cb.HighsCallbackType.kCallbackMipLogging)
    if start is not None:
        sol = h.HighsSolution()
        sol.col_value = np.asarray(start, dtype=float)
        sol.value_valid = True
        highs.setSolution(sol)
    highs.run()
    status = highs.getModelStatus()
    message = highs.modelStatusToString(status)
    info = highs.getInfo()
    infeasible = status == h.HighsModelStatus.kInfeasible
    has_x = int(info.primal_solution_status) == 2  # kSolutionStatusFeasible
    x = np.asarray(highs.getSolution().col_value) if has_x else None
    objective = float(info.objective_function_value) if has_x else float("nan")
    bound = float(info.mip_dual_bound)
    optimal = status == h.HighsModelStatus.kOptimal
    gap = relative_gap(objective, bound) if not optimal else min(float(info.mip_gap), relative_gap(objective, bound))
    if trace is not None and has_x:
        trace.append((float(highs.getRunTime()), objective, objective if optimal else bound))
    return SolveResult(x, objective, bound, gap, optimal, infeasible, message, "highs")
