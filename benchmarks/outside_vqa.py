"""An outside data set for the fine-tune: easy-VQA (Victor Zhou, MIT licence), as a user brings it.

    pip install easy-vqa                      # from PyPI: 5,000 pictures and their questions
    python benchmarks/outside_vqa.py -o easy-vqa/ [--sample 1000 --seed 0]
    vlm-train --init ckpt16/ --data easy-vqa/train.json --eval-data easy-vqa/test-sample.json -o mine/

writes easy-vqa/images/{train,test}_*.png (copies), easy-vqa/train.json (38,575 questions on 4,000
pictures), easy-vqa/test.json (9,673 on 1,000) and easy-vqa/test-sample.json (--sample of the test
questions drawn with --seed), in the LLaVA format vlm-train --data and vlm-eval --data read.

easy-VQA was made by others, for other models: 64x64 pictures of one circle, rectangle (any
aspect) or triangle, in nine colours (teal, brown, black, gray and white among them), anywhere
and of any size on a pale ground, drawn with Pillow; questions in its own words ("what is the blue
shape?", "does the image contain a rectangle?", "is there not a triangle?"), answers among 13.
The tiny models were never tuned on it: it is how we read what a fine-tune does on data we did not
make. Nothing of it ships with vlm-edge.
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import sys
from pathlib import Path


def records(questions, split: str) -> list[dict]:
    return [{"image": f"images/{split}_{image}.png",
             "conversations": [{"from": "human", "value": f"<image>\n{text}"}, {"from": "gpt", "value": answer}]}
            for text, answer, image in zip(*questions)]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("-o", "--output", required=True, help="folder for images/, train.json, test.json, test-sample.json")
    p.add_argument("--sample", type=int, default=1000, help="test questions in test-sample.json (default 1000)")
    p.add_argument("--seed", type=int, default=0, help="seed of the test sample (default 0)")
    args = p.parse_args()
    try:
        import easy_vqa
    except ImportError:
        print("outside_vqa.py: the easy-vqa package is not installed; run `pip install easy-vqa` first", file=sys.stderr)
        return 2
    out = Path(args.output)
    (out / "images").mkdir(parents=True, exist_ok=True)
    for split, questions, paths in (("train", easy_vqa.get_train_questions(), easy_vqa.get_train_image_paths()),
                                    ("test", easy_vqa.get_test_questions(), easy_vqa.get_test_image_paths())):
        for image, path in paths.items():
            shutil.copyfile(path, out / "images" / f"{split}_{image}.png")
        rows = records(questions, split)
        (out / f"{split}.json").write_text(json.dumps(rows, indent=1) + "\n")
        print(f"{split}: {len(rows)} questions on {len(paths)} pictures -> {out / f'{split}.json'}")
        if split == "test":
            sample = random.Random(args.seed).sample(rows, min(args.sample, len(rows)))
            (out / "test-sample.json").write_text(json.dumps(sample, indent=1) + "\n")
            print(f"test sample: {len(sample)} questions (seed {args.seed}) -> {out / 'test-sample.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
