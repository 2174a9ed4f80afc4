"""Run a trained LMTCNN in any of its forms: checkpoint, frozen graph, SavedModel, TFLite.

Every model takes uint8 RGB faces [n, S, S, 3] and returns (age_probs [n, 8],
gender_probs [n, 2]) as numpy arrays (see lmtcnn.serving); `export` checks the formats
against each other with them and `predict` classifies faces with any one. All run on
the CPU: this process never loads the Ascend adapter (lmtcnn.device), which would
reroute every TensorFlow session to the NPU.
"""

import contextlib
import os
import warnings

import numpy as np

from lmtcnn.errors import UserError
from lmtcnn.serving import INPUT, OUTPUTS

SAVED_MODEL_FILE = "saved_model.pb"


@contextlib.contextmanager
def tflite_deprecation_quiet():
    """TF 2.20+ warns on every tf.lite.Interpreter that it moves to the separate LiteRT
    package; it still runs, and TF 1.15 has nothing else."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        yield


class SessionModel:
    """A TensorFlow graph in its own CPU session: a checkpoint, a frozen graph or a SavedModel."""

    def __init__(self, sess, image, outputs, naming=None):
        self.sess, self.image, self.outputs = sess, image, outputs
        self.image_size = int(image.shape[1])
        self.naming = naming  # the checkpoint's variable names: "lmtcnn" or "reference"

    def predict(self, images):
        age, gender = self.sess.run(self.outputs, {self.image: images})
        return age, gender

    def close(self):
        self.sess.close()


class TFLiteModel:
    """A .tflite model; TFLite inputs have a fixed batch of 1, so faces go one at a time."""

    def __init__(self, path, threads=1):
        from lmtcnn.tfcompat import VERSION, tf

        # TF 1.15's interpreter takes no thread count (it keeps its own default).
        options = {} if VERSION.startswith("1.") else {"num_threads": threads}
        with tflite_deprecation_quiet():
            try:
                self.interpreter = tf.lite.Interpreter(model_path=path, **options)
                self.interpreter.allocate_tensors()
            except ValueError as e:
                raise UserError("--model %s: not a TFLite model (%s)" % (path, str(e).splitlines()[0]))
        (self.input,) = self.interpreter.get_input_details()
        outputs = {d["name"]: d["index"] for d in self.interpreter.get_output_details()}
        shape = list(self.input["shape"])
        if self.input["dtype"] != np.uint8 or len(shape) != 4 or shape[0] != 1 or set(outputs) != set(OUTPUTS):
            raise UserError("--model %s: not a model from `python -m lmtcnn export` (input %s %s, outputs %s)"
                            % (path, self.input["dtype"].__name__, shape, ", ".join(sorted(outputs))))
        self.outputs = [outputs[name] for name in OUTPUTS]
        self.image_size = int(shape[1])

    def predict(self, images):
        results = []
        for image in images:
            self.interpreter.set_tensor(self.input["index"], image[None])
            self.interpreter.invoke()
            results.append([self.interpreter.get_tensor(i)[0] for i in self.outputs])
        age, gender = (np.stack(parts) for parts in zip(*results))
        return age, gender

    def close(self):
        self.interpreter = None


def cpu_session(graph, threads):
    from lmtcnn.device import session_config
    from lmtcnn.tfcompat import tf

    return tf.Session(graph=graph, config=session_config("cpu", threads))


def checkpoint_model(model_config, prefix, threads=1, batch_size=None, what="--checkpoint"):
    """The network of `model_config` with the weights of checkpoint `prefix` (either naming)."""
    from lmtcnn.checkpoint_names import restore_network
    from lmtcnn.serving import build_serving_graph

    graph = build_serving_graph(model_config, batch_size)
    sess = cpu_session(graph.tf_graph, threads)
    try:
        with graph.tf_graph.as_default():  # TF 2 builds a restore outside any graph eagerly
            mapping = restore_network(sess, graph.variables, prefix, what=what)
    except BaseException:
        sess.close()
        raise
    return SessionModel(sess, graph.image, [graph.age_probs, graph.gender_probs], naming=mapping.naming)


def frozen_graph_model(path, threads=1):
    from google.protobuf.message import DecodeError

    from lmtcnn.tfcompat import tf

    graph_def = tf.GraphDef()
    try:
        with open(path, "rb") as f:
            graph_def.ParseFromString(f.read())
    except (OSError, DecodeError) as e:
        raise UserError("--model %s: not a frozen TensorFlow graph (%s)" % (path, e))
    graph = tf.Graph()
    with graph.as_default():
        tf.import_graph_def(graph_def, name="")
    return SessionModel(cpu_session(graph, threads), *_named_tensors(graph, path))


def saved_model(path, threads=1):
    from lmtcnn.tfcompat import tf

    graph = tf.Graph()
    sess = cpu_session(graph, threads)
    with graph.as_default():
        meta = tf.saved_model.loader.load(sess, [tf.saved_model.tag_constants.SERVING], path)
    signature = meta.signature_def[tf.saved_model.signature_constants.DEFAULT_SERVING_SIGNATURE_DEF_KEY]
    image = graph.get_tensor_by_name(signature.inputs[INPUT].name)
    outputs = [graph.get_tensor_by_name(signature.outputs[name].name) for name in OUTPUTS]
    return SessionModel(sess, image, outputs)


def _named_tensors(graph, path):
    try:
        return graph.get_tensor_by_name(INPUT + ":0"), [graph.get_tensor_by_name(n + ":0") for n in OUTPUTS]
    except KeyError:
        raise UserError("--model %s: not a graph from `python -m lmtcnn export` (it needs tensors %s)"
                        % (path, ", ".join((INPUT,) + OUTPUTS)))


def open_model(path, config_path=None, threads=1):
    """A model from what `predict --model` names: a .pb, a .tflite, a SavedModel directory,
    or a fold directory or checkpoint with the configuration found beside it."""
    if path.endswith(".tflite") and os.path.isfile(path):
        return TFLiteModel(path, threads)
    if path.endswith(".pb") and os.path.isfile(path):
        return frozen_graph_model(path, threads)
    if os.path.isfile(os.path.join(path, SAVED_MODEL_FILE)):
        return saved_model(path, threads)
    if not os.path.exists(path) and not os.path.exists(path + ".index"):
        raise UserError("--model %s: no such file or directory; pass a .pb or .tflite made by `python -m lmtcnn "
                        "export`, or a fold directory" % path)
    from lmtcnn.trained_fold import locate

    trained = locate(checkpoint=path, config_path=config_path, what="--model")
    return checkpoint_model(trained.config.model, trained.checkpoint, threads, what="--model")
