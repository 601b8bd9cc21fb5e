"""Set up's Cluster panel: the form's run written as a job folder for a Slurm cluster (jobs/cluster.py), offered as a
zip with the command that submits it. The form's config passes the gate as at launch; the cluster's values are
checked by ClusterSpec, the one place for them, whatever a caller of the endpoint sends."""
from __future__ import annotations

import gradio as gr

from jobs.cluster_spec import MAX_GPUS_PER_NODE, MAX_NODES, ClusterSpec
from workbench.config.escaping import plain
from workbench.config.fields import ConfigError
from workbench.ui.form import SetupForm, form_to_config
from workbench.ui.services import Services

MODES = [("DDP (a copy of the student per GPU)", "ddp"), ("FSDP (the student sharded over the GPUs)", "fsdp")]


def write_cluster_job(services: Services, form: SetupForm, nodes, gpus_per_node, mode, partition,
                      time_limit) -> tuple[str | None, str]:
    """(the job folder's zip, or None; markdown: the command and what to see to, or the problems by field)."""
    try:
        config = form_to_config(form, services.gate, services.uploads_dir).config
        job, archive = services.cluster_job(config, ClusterSpec(nodes=nodes, gpus_per_node=gpus_per_node, mode=mode,
                                                                partition=partition, time=time_limit))
    except ConfigError as err:
        return None, "**No cluster job written — fix these first:**\n" + "\n".join(
            f"- **{plain(field)}**: {plain(message)}" for field, message in err.problems)
    notes = "".join(f"\n- {plain(note)}" for note in job.notes)
    return str(archive), (f"**Cluster job written** ({plain(archive.name)}): run {plain(job.runs[0])} on "
                          f"{nodes} × {gpus_per_node} GPUs. Unzip it on the cluster and, in its folder, run "
                          "`sbatch job.slurm`; its README.txt says how to copy the run back."
                          + (f"\n\nSee to these first:{notes}" if notes else ""))


def create_cluster_panel(services: Services, default, inputs: dict) -> None:
    """An accordion under the form; `inputs` are the form's components in the endpoints' order."""
    with gr.Accordion("Cluster: this run as a Slurm job for several GPUs and nodes (accelerate)", open=False):
        with gr.Row():
            nodes = gr.Number(1, label="Nodes", precision=0, minimum=1, maximum=MAX_NODES, elem_id="cluster-nodes")
            gpus = gr.Number(1, label="GPUs per node", precision=0, minimum=1, maximum=MAX_GPUS_PER_NODE,
                             elem_id="cluster-gpus")
            mode = gr.Radio(MODES, value="ddp", label="Distribution", elem_id="cluster-mode")
            partition = gr.Textbox("", label="Slurm partition", info="empty: the cluster's default",
                                   elem_id="cluster-partition")
            time_limit = gr.Textbox(ClusterSpec.time, label="Time limit", info="HH:MM:SS or D-HH:MM:SS",
                                    elem_id="cluster-time")
        button = gr.Button("Write cluster job", elem_id="cluster-write")
        download = gr.DownloadButton("Download job folder (zip)", visible=False, elem_id="cluster-download")
        message = gr.Markdown(elem_id="cluster-message")

    def on_write(node_count, gpu_count, chosen_mode, partition_name, limit, *values):
        archive, text = write_cluster_job(services, SetupForm.from_list(default, values), node_count, gpu_count,
                                          chosen_mode, partition_name, limit)
        return text, gr.DownloadButton(value=archive, visible=archive is not None)

    button.click(on_write, [nodes, gpus, mode, partition, time_limit, *inputs.values()], [message, download],
                 api_name="write_cluster_job")
