"""An exported ONNX folder in an ONNX Runtime session, one call at a time.

Everything comes from the folder's lmexport.json: input and output names, state
shapes and dtypes, and which ``present_*`` output feeds which ``past_*`` input.
State starts as zeros (past length 0) and is fed back after every call. On CUDA
the state stays on the device between calls through IO binding.

Imports only onnxruntime, numpy and lmexport's torch-free modules.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import onnxruntime as ort

from lmexport.engine import EngineBase, EngineInfo
from lmexport.errors import ArtifactError, DeviceError, InputError
from lmexport.manifest import MANIFEST_FILE, Manifest, check_files, io_contract_problems
from lmexport.manifest_schema import IO_ROLES

log = logging.getLogger(__name__)
NUMPY_DTYPES = {"int64": np.int64, "float32": np.float32, "float16": np.float16}
DEVICES = ("cpu", "cuda", "auto")
OPT_LEVELS = {"disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
              "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
              "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
              "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL}


def choose_providers(device: str, available: list[str] | None = None) -> list[str]:
    """cpu: CPU only; cuda: CUDA or a DeviceError; auto: CUDA when this onnxruntime has it.

    ``available`` defaults to ``onnxruntime.get_available_providers()`` (a parameter so
    the choice can be tested on a machine without a GPU).
    """
    if device not in DEVICES:
        raise DeviceError(f"unknown device {device!r}", hint="use cpu, cuda or auto")
    available = ort.get_available_providers() if available is None else list(available)
    has_cuda = "CUDAExecutionProvider" in available
    if device == "cuda" and not has_cuda:
        raise DeviceError("--device cuda was asked for, but this onnxruntime has no CUDAExecutionProvider "
                          f"(available: {', '.join(available)})",
                          hint="install onnxruntime-gpu with a matching CUDA, or use --device cpu")
    if device == "cpu" or not has_cuda:
        return ["CPUExecutionProvider"]
    return ["CUDAExecutionProvider", "CPUExecutionProvider"]


def max_threads() -> int:
    """The most intra-op threads a session may ask for: the machine's logical CPUs."""
    return os.cpu_count() or 1


def check_threads(threads: int | None) -> None:
    """``threads`` (None: the library's default) against the machine; InputError when beyond it."""
    if threads is None:
        return
    if isinstance(threads, bool) or not isinstance(threads, int) or not 1 <= threads <= max_threads():
        raise InputError(f"--threads {threads!r} is out of range: this machine has {max_threads()} CPUs",
                         hint=f"use 1..{max_threads()}, or leave --threads out for the default")


def graph_values(folder: Path, manifest: Manifest) -> set[str]:
    """Names of every value the graph computes or takes (needs the onnx package: parity only)."""
    import onnx

    graph = onnx.load(str(folder / manifest.model_file), load_external_data=False).graph
    names = {i.name for i in graph.input} | {i.name for i in graph.initializer}
    return names | {o for node in graph.node for o in node.output if o}


def _with_outputs(folder: Path, manifest: Manifest, names: tuple[str, ...]) -> bytes:
    """The graph with ``names`` added as outputs, in memory; weights stay in the folder."""
    import onnx  # only needed for probes (parity), not for generation

    model = onnx.load(str(folder / manifest.model_file), load_external_data=False)
    have = {o.name for o in model.graph.output}
    for name in names:
        if name not in have:
            model.graph.output.append(onnx.helper.make_empty_tensor_value_info(name))
    return model.SerializeToString()


class Session:
    """Run a folder call by call. ``extra_outputs``: graph values (e.g. manifest probes) to fetch too."""

    def __init__(self, folder: str | Path, *, device: str = "cpu", threads: int | None = None,
                 optimization: str = "all", extra_outputs: tuple[str, ...] = (), low_memory: bool = False):
        self.folder = Path(folder)
        self.manifest = Manifest.read(self.folder)
        check_threads(threads)
        self.changed = check_files(self.folder, self.manifest)
        if self.changed:
            log.warning("%s: %s differ(s) from the export recorded in %s (re-saved or optimised?); running "
                        "it anyway; `lmexport parity` compares it with PyTorch", self.folder,
                        ", ".join(self.changed), MANIFEST_FILE)
        self.providers = choose_providers(device)
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        if optimization not in OPT_LEVELS:
            raise DeviceError(f"unknown graph optimisation level {optimization!r}",
                              hint="use " + ", ".join(OPT_LEVELS))
        options.graph_optimization_level = OPT_LEVELS[optimization]
        if low_memory:  # no pre-packed weight copies (the validator runs beside a PyTorch model)
            options.add_session_config_entry("session.disable_prepacking", "1")
        model: str | bytes = str(self.folder / self.manifest.model_file)
        if extra_outputs:
            model = _with_outputs(self.folder, self.manifest, extra_outputs)
            options.add_session_config_entry("session.model_external_initializers_file_folder_path",
                                             str(self.folder.absolute()))
        try:
            self.session = ort.InferenceSession(model, options, providers=self.providers)
        except (ort.capi.onnxruntime_pybind11_state.Fail,
                ort.capi.onnxruntime_pybind11_state.InvalidGraph,
                ort.capi.onnxruntime_pybind11_state.InvalidProtobuf) as exc:
            raise ArtifactError(f"ONNX Runtime cannot load {self.folder}: {str(exc).splitlines()[0][:200]}",
                                hint="re-export the folder with lmexport onnx") from exc
        # onnxruntime-gpu drops CUDA with only a warning when its CUDA libraries do not load
        used = self.session.get_providers()
        self.device = "cuda" if "CUDAExecutionProvider" in used else "cpu"
        if device == "cuda" and self.device != "cuda":
            raise DeviceError("--device cuda was asked for, but ONNX Runtime could not start its "
                              f"CUDAExecutionProvider (running: {', '.join(used)})",
                              hint="check that the CUDA and cuDNN libraries onnxruntime-gpu needs are installed, "
                                   "or use --device cpu")
        log.log(logging.INFO if device == "auto" else logging.DEBUG,  # auto says what it chose
                "ONNX Runtime session on %s (--device %s; providers %s)", self.device, device, ", ".join(used))
        broken = io_contract_problems(self.manifest, self.session.get_inputs(), self.session.get_outputs())
        if broken:
            raise ArtifactError(f"the graph in {self.folder} no longer has the inputs and outputs {MANIFEST_FILE} "
                                "describes, so it cannot be run: " + "; ".join(broken[:6]),
                                hint="re-export the folder, or keep the graph's inputs and outputs when editing it")
        self.output_names = [o.name for o in self.session.get_outputs()]
        self.states = self.manifest.state_inputs()
        self.logits_name = self.manifest.output("logits").name
        self._roles = {role: self.manifest.input(role).name
                       for role in IO_ROLES}

    # ------------------------------------------------------------ state
    def zero_state(self, batch: int) -> dict[str, np.ndarray]:
        axes = {"batch_size": batch, "past_sequence_length": 0}
        return {s.name: np.zeros(s.concrete_shape(axes), dtype=NUMPY_DTYPES[s.dtype]) for s in self.states}

    def next_state(self, outputs: dict) -> dict:
        return {s.name: outputs[s.present] for s in self.states}

    # ------------------------------------------------------------ calls
    def run(self, input_ids: np.ndarray, attention_mask: np.ndarray, position_ids: np.ndarray,
            state: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """One call on the host; returns every output by name (numpy)."""
        feeds = {self._roles["input_ids"]: input_ids, self._roles["attention_mask"]: attention_mask,
                 self._roles["position_ids"]: position_ids, **state}
        return dict(zip(self.output_names, self._call(lambda: self.session.run(None, feeds))))

    def step(self, input_ids: np.ndarray, attention_mask: np.ndarray, position_ids: np.ndarray,
             state: dict) -> tuple[np.ndarray, dict]:
        """One call; returns (logits on the host, the state for the next call).

        The state is kept as OrtValues on the session's device (IO binding): the
        presents of one call are bound as the pasts of the next without a copy or a
        numpy conversion, on the CPU as on CUDA (on a 1.1B int4 decode step on 2 CPU
        cores this saved about 2-3 ms of 37). ``state`` may start as numpy arrays
        (``zero_state``).
        """
        binding = self.session.io_binding()
        for name, value in ((self._roles["input_ids"], input_ids), (self._roles["attention_mask"], attention_mask),
                            (self._roles["position_ids"], position_ids)):
            binding.bind_cpu_input(name, np.ascontiguousarray(value))
        for name, value in state.items():
            if isinstance(value, np.ndarray):
                value = ort.OrtValue.ortvalue_from_numpy(value, self.device, 0)
            binding.bind_ortvalue_input(name, value)
        for name in self.output_names:
            binding.bind_output(name, "cpu" if name == self.logits_name else self.device)
        self._call(lambda: self.session.run_with_iobinding(binding))
        outputs = dict(zip(self.output_names, binding.get_outputs()))
        return outputs[self.logits_name].numpy(), self.next_state(outputs)

    def _call(self, run):
        """Run one call; a kernel the provider lacks becomes one clear DeviceError.

        onnxruntime's CUDA Attention(23) kernels do not cover every case the CPU ones do
        (in some releases: grouped-query attention with a KV cache and a mask), and report
        it only when the node runs. The plain graph (``--no-fused-ops``) avoids the op."""
        try:
            return run()
        except (ort.capi.onnxruntime_pybind11_state.NotImplemented,
                ort.capi.onnxruntime_pybind11_state.EPFail) as exc:
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:240]
            fused = self.manifest.fused_ops and "Attention" in str(exc)
            raise DeviceError(f"ONNX Runtime on {self.device} cannot run {self.folder}: {first}",
                              hint="re-export it with `lmexport onnx --no-fused-ops` for this provider, "
                                   "or use --device cpu" if fused else "use --device cpu") from exc


class OnnxEngine(EngineBase):
    """An exported ONNX folder in ONNX Runtime, behind the one engine protocol (``lmexport.engine``).

    ``reset(batch)`` starts from zero state; ``step(ids, mask, positions)`` returns the logits
    [B, T, V] on the host and keeps the state on the session's device. Per-layer outputs
    (``intermediates``) come from the folder's own graph: lmexport.json names the graph values that
    hold them (``probes``); they are added as outputs of an in-memory copy of the graph, so the
    weights and the computation are the artifact's, not a stand-in's."""

    def __init__(self, folder: str | Path, *, device: str = "cpu", threads: int | None = None,
                 optimization: str = "all", low_memory: bool = False, session: Session | None = None):
        self.session = session or Session(folder, device=device, threads=threads, optimization=optimization,
                                          low_memory=low_memory)
        self.path = self.session.folder
        self.manifest = m = self.session.manifest
        self.requested_device, self.threads = device, threads
        self.state: dict = {}
        self._tokenizer = None
        self._probe_session: Session | None = None
        self._probes: dict[str, str] = {}
        pad = m.tokenizer.get("pad_token_id", m.config.get("pad_token_id"))
        self.info = EngineInfo(kind="onnx", engine="onnxruntime", variant=m.variant, device=self.session.device,
                               context_length=int(m.config.get("max_position_embeddings", 2048)),
                               vocab_size=int(m.config.get("vocab_size", 0)),
                               bos_token_id=m.config.get("bos_token_id"),
                               eos_token_ids=tuple(int(i) for i in m.tokenizer.get("eos_token_ids") or ()),
                               pad_token_id=int(pad) if pad is not None else 0, tolerance=m.preset,
                               versions={"onnxruntime": ort.__version__})

    def reset(self, batch: int) -> None:
        self.state = self.session.zero_state(batch)

    def step(self, ids: np.ndarray, mask: np.ndarray, positions: np.ndarray) -> np.ndarray:
        logits, self.state = self.session.step(ids, mask, positions, self.state)
        return logits.astype(np.float32, copy=False)

    @property
    def tokenizer(self):
        if self._tokenizer is None:
            from lmexport.runtime.tokenizer import TextTokenizer

            self._tokenizer = TextTokenizer.from_folder(self.path, eos_token_ids=self.info.eos_token_ids)
        return self._tokenizer

    @property
    def has_probes(self) -> bool:
        return bool(self.manifest.probes)

    def intermediates(self, ids: np.ndarray, mask: np.ndarray, positions: np.ndarray) -> dict[str, np.ndarray]:
        probes = self.manifest.probes
        if not probes:
            log.warning("%s lists no probes: cannot localise inside the graph", self.path)
            return {}
        if self._probe_session is None:
            present = graph_values(self.path, self.manifest)
            self._probes = {key: value for key, value in probes.items() if value in present}
            gone = len(probes) - len(self._probes)
            if not self._probes:
                log.warning("none of the %d probe values of %s is left in its graph (optimised or re-written?): "
                            "cannot localise the divergence inside it", len(probes), self.path)
                return {}
            if gone:
                log.warning("%d of %d probe values of %s are gone from its graph (optimised or re-written?): "
                            "localisation covers only the %d left", gone, len(probes), self.path, len(self._probes))
            self._probe_session = Session(self.path, device=self.requested_device, threads=self.threads,
                                          extra_outputs=tuple(self._probes.values()))
        s = self._probe_session
        out = s.run(ids, mask, positions, s.zero_state(ids.shape[0]))
        return {key: out[value].astype(np.float32) for key, value in self._probes.items()}
