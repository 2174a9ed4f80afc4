"""The inference graph every exported format is made from: face pixels in, probabilities out.

The caller brings the face at the input side: `predict` crops and resizes it as
`prepare` stores faces (lmtcnn.faces); `export` checks the formats on test images
resized as the test view resizes them (lmtcnn.input_pipeline.input_images).

  input   `image`         uint8 [N, S, S, 3], RGB, S = model.image_size (227 for the
                          real recipes); N is free in the frozen graph, 1 in TFLite
  inside  the test view   lmtcnn.input_pipeline.test_view, as evaluation sees a face: its
                          resize has nothing to do at S x S, then per-image standardisation
          the network     batch norm with its moving averages
  output  `age_probs`     float32 [N, 8], softmax over lmtcnn.adience.AGE_GROUPS
          `gender_probs`  float32 [N, 2], softmax over lmtcnn.adience.GENDERS
"""

import collections

from lmtcnn.input_pipeline import test_view
from lmtcnn.model import build_lmtcnn
from lmtcnn.tfcompat import tf

INPUT = "image"
OUTPUTS = ("age_probs", "gender_probs")

ServingGraph = collections.namedtuple("ServingGraph", "tf_graph image age_probs gender_probs variables")


def build_serving_graph(model_config, batch_size=None):
    """A new graph holding the inference network of `model_config`, variables not yet set
    (restore them with lmtcnn.checkpoint_names.restore_network)."""
    graph = tf.Graph()
    size = model_config.image_size
    with graph.as_default():
        image = tf.placeholder(tf.uint8, [batch_size, size, size, 3], name=INPUT)
        age_logits, gender_logits, _ = build_lmtcnn(test_view(tf.cast(image, tf.float32), size),
                                                    model_config.type, is_training=False)
        age_probs = tf.nn.softmax(age_logits, name=OUTPUTS[0])
        gender_probs = tf.nn.softmax(gender_logits, name=OUTPUTS[1])
        variables = [v for v in tf.global_variables() if v.op.name.startswith("lmtcnn/")]
    return ServingGraph(graph, image, age_probs, gender_probs, variables)
