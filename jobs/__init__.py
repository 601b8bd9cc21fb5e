"""Background jobs: `spec` (the JobSpec written as spec.json before anything runs), `launcher` (the
command and the minimal environment of a worker, under accelerate for several processes), `process` (a
started worker: its pid, group and exit), `manager` (the queue and its order, cancel, resume, delete, the
jobs found at start), `monitor` (CPU, memory and GPU memory of the machine and of each worker) and
`worker` (the process itself: runs the engine into the run folder); `cluster` writes a run or a study as a
Slurm job folder (with `cluster_spec`, its settings, and `cluster_scripts`, its shell side) for the same worker. Imports `workbench` packages up to
`engine`; only `workbench.ui` and the CLI import it."""
