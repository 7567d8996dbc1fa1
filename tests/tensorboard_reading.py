"""Read a log folder the way TensorBoard's own dashboards do: its hparams plugin's handlers
over its event multiplexer, and the custom-scalars layout."""

from __future__ import annotations

from pathlib import Path


def hparams_plugin(logdir: Path):
    """TensorBoard's hparams plugin backend over `logdir`, as `tensorboard --logdir` runs it."""
    from tensorboard.backend.event_processing import data_provider, plugin_event_multiplexer
    from tensorboard.plugins import base_plugin
    from tensorboard.plugins.hparams import backend_context

    multiplexer = plugin_event_multiplexer.EventMultiplexer()
    multiplexer.AddRunsFromDirectory(str(logdir))
    multiplexer.Reload()
    provider = data_provider.MultiplexerDataProvider(multiplexer, str(logdir))
    return backend_context.Context(
        base_plugin.TBContext(logdir=str(logdir), data_provider=provider)
    )


def hparams_columns(logdir: Path) -> list[str]:
    """The settings in the order the HParams tab gets them; it shows the first five."""
    from tensorboard import context
    from tensorboard.plugins.hparams import api_pb2, get_experiment

    experiment = get_experiment.Handler(
        context.RequestContext(), hparams_plugin(logdir), "", api_pb2.GetExperimentRequest()
    ).run()
    return [info.name for info in experiment.hparam_infos]


def hparams_sessions(logdir: Path) -> list[dict]:
    """The HParams tab's table: one dict per session with its `hparams` and `metrics`
    (metric tag -> value), as TensorBoard's hparams plugin answers its web page."""
    from google.protobuf import json_format
    from tensorboard import context
    from tensorboard.plugins.hparams import api_pb2, list_session_groups

    plugin_context = hparams_plugin(logdir)
    request = api_pb2.ListSessionGroupsRequest(
        start_index=0,
        slice_size=100,
        allowed_statuses=[
            api_pb2.STATUS_UNKNOWN,
            api_pb2.STATUS_SUCCESS,
            api_pb2.STATUS_FAILURE,
            api_pb2.STATUS_RUNNING,
        ],
        include_metrics=True,
    )
    response = list_session_groups.Handler(
        context.RequestContext(), plugin_context, "", request
    ).run()
    sessions = []
    for group in response.session_groups:
        hparams = json_format.MessageToDict(group)["hparams"]
        metrics = {m.name.tag: m.value for session in group.sessions for m in session.metric_values}
        sessions.append({"hparams": hparams, "metrics": metrics})
    return sessions


def custom_scalar_charts(events) -> dict[str, list[str]]:
    """Chart title -> tag regexes of the custom-scalars layout in an EventAccumulator."""
    from tensorboard.plugins.custom_scalar import layout_pb2
    from tensorboard.plugins.custom_scalar import metadata as custom_scalar_metadata
    from tensorboard.util import tensor_util

    config = events.Tensors(custom_scalar_metadata.CONFIG_SUMMARY_TAG)[0].tensor_proto
    layout = layout_pb2.Layout()
    layout.ParseFromString(tensor_util.make_ndarray(config).item())
    return {c.title: list(c.multiline.tag) for cat in layout.category for c in cat.chart}
