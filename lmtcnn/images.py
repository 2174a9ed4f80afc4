"""Image decoding for `prepare`: OpenCV only, so worker processes never load TensorFlow."""

import cv2


def encode_face(task):
    """Read one face image, resize it to a square and re-encode it as JPEG.

    Args: task = (path, side_px, quality).
    Returns: (path, jpeg bytes or None, problem text or None).
    """
    path, side, quality = task
    data = cv2.imread(path, cv2.IMREAD_COLOR)
    if data is None:
        import os

        return path, None, "missing" if not os.path.exists(path) else "undecodable"
    if data.shape[:2] != (side, side):
        shrinking = data.shape[0] > side
        data = cv2.resize(data, (side, side), interpolation=cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR)
    ok, encoded = cv2.imencode(".jpg", data, [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        return path, None, "undecodable"
    return path, encoded.tobytes(), None
