"""Checkpoints in either naming: this project's (`lmtcnn/...`) or the reference's.

The authors' `train.py` (ivclab/agegenderLMTCNN) and the Ascend port's, which keeps its
model code, save the network under these names (slim layers; BN with centre, no scale):

  ours (lmtcnn/...)                    reference
  conv1/{weights,biases}               multitaskdpcnn/conv1/{weights,biases}
  separable<i>/depthwise/weights       multitaskdpcnn/convdp<i>/depthwise_conv/depthwise_weights
  separable<i>/depthwise/biases        multitaskdpcnn/convdp<i>/depthwise_conv/biases
  separable<i>/depthwise/bn/<s>        multitaskdpcnn/convdp<i>/dw_batch_norm/<s>
  separable<i>/pointwise/{weights,biases}  multitaskdpcnn/convdp<i>/pointwise_conv/{weights,biases}
  separable<i>/pointwise/bn/<s>        multitaskdpcnn/convdp<i>/pw_batch_norm/<s>
  fc1, fc2                             multitaskdpcnn/full1, multitaskdpcnn/full2
  age_logits/{weights,biases}          ageoutput/{ageweights,agebiases}
  gender_logits/{weights,biases}       genderoutput/{genderweights,genderbiases}

(<s>: beta, moving_mean, moving_variance.) Shapes are the same, the flatten before fc1
included (NHWC, channels fastest). Their checkpoints also hold the global step
(`Variable`), the learning rate and Momentum slots (`OptimizeLoss/...`) and loss
averages (`.../avg`): none of those is part of the network, so none is restored.

Restoring maps names at restore time; this project keeps its own names when it saves.
"""

import collections
import re

from lmtcnn.errors import UserError

REFERENCE_SCOPES = ("multitaskdpcnn/", "ageoutput/", "genderoutput/")
_LAYERS = (  # (our prefix, reference prefix), longest first so that bn/ wins over depthwise/
    ("separable{i}/depthwise/bn/", "multitaskdpcnn/convdp{i}/dw_batch_norm/"),
    ("separable{i}/pointwise/bn/", "multitaskdpcnn/convdp{i}/pw_batch_norm/"),
    ("separable{i}/depthwise/weights", "multitaskdpcnn/convdp{i}/depthwise_conv/depthwise_weights"),
    ("separable{i}/depthwise/biases", "multitaskdpcnn/convdp{i}/depthwise_conv/biases"),
    ("separable{i}/pointwise/", "multitaskdpcnn/convdp{i}/pointwise_conv/"),
    ("conv1/", "multitaskdpcnn/conv1/"),
    ("fc1/", "multitaskdpcnn/full1/"),
    ("fc2/", "multitaskdpcnn/full2/"),
    ("age_logits/weights", "ageoutput/ageweights"),
    ("age_logits/biases", "ageoutput/agebiases"),
    ("gender_logits/weights", "genderoutput/genderweights"),
    ("gender_logits/biases", "genderoutput/genderbiases"),
)
PREFIXES = [(ours.format(i=i), theirs.format(i=i)) for ours, theirs in _LAYERS for i in (1, 2)
            if "{i}" in ours or i == 1]

VariableMap = collections.namedtuple("VariableMap", "naming matched missing mismatched unused")
"""naming: "lmtcnn" or "reference"; matched: {checkpoint name: variable}; missing: our
names the checkpoint lacks; mismatched: "name [ckpt shape] != [ours]"; unused: network
variables of the checkpoint that nothing here took."""


def reference_name(name):
    """The reference's name of our variable `lmtcnn/...`, or None when it has none."""
    inner = name[len("lmtcnn/"):] if name.startswith("lmtcnn/") else name
    for ours, theirs in PREFIXES:
        if inner == ours or (ours.endswith("/") and inner.startswith(ours)):
            return theirs + inner[len(ours):]
    return None


def naming_of(checkpoint_names):
    if any(n.startswith("lmtcnn/") for n in checkpoint_names):
        return "lmtcnn"
    if any(n.startswith(REFERENCE_SCOPES) for n in checkpoint_names):
        return "reference"
    return None


def map_variables(variables, shapes):
    """Pair our network `variables` with a checkpoint's {name: shape} in its naming."""
    naming = naming_of(shapes)
    matched, missing, mismatched = {}, [], []
    for var in variables:
        name = var.op.name if naming != "reference" else reference_name(var.op.name)
        if name is None or name not in shapes:
            missing.append(var.op.name)
        elif list(shapes[name]) != var.shape.as_list():
            mismatched.append("%s %s!=%s" % (var.op.name, list(shapes[name]), var.shape.as_list()))
        else:
            matched[name] = var
    network = ("lmtcnn/",) if naming == "lmtcnn" else REFERENCE_SCOPES
    # Optimizer slots live under the variables' own names (.../Momentum): not the network.
    unused = sorted(n for n in shapes if n.startswith(network) and n not in matched
                    and not re.search(r"/(Momentum|Adam\w*|ExponentialMovingAverage)$", n))
    return VariableMap(naming, matched, missing, mismatched, unused)


def read_shapes(path, what):
    """{name: shape} of checkpoint `path`; UserError (naming `what`) if it is no checkpoint."""
    from lmtcnn.tfcompat import tf

    try:
        return tf.train.NewCheckpointReader(path).get_variable_to_shape_map()
    except Exception as e:
        raise UserError("%s %s: not a readable TensorFlow checkpoint (%s)" % (what, path, str(e).splitlines()[0]))


def restore_network(sess, variables, path, what="--checkpoint"):
    """Restore every network variable (weights and BN statistics) from `path`, in either
    naming. Returns the VariableMap. Raises UserError when any is missing or misshapen:
    an evaluation must not run on half-initialised weights."""
    from lmtcnn.tfcompat import tf

    mapping = map_variables(variables, read_shapes(path, what))
    if mapping.missing or mapping.mismatched:
        problems = ["not in it: " + ", ".join(mapping.missing)] if mapping.missing else []
        problems += ["shape differs: " + ", ".join(mapping.mismatched)] if mapping.mismatched else []
        raise UserError("%s %s: does not hold this network (%s); check model.type and model.image_size"
                        % (what, path, "; ".join(problems)))
    tf.train.Saver(mapping.matched).restore(sess, path)
    return mapping
