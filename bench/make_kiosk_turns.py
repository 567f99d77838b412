"""Generate the synthetic shop-kiosk benchmark: typed or spoken requests + rendered camera frames.

    python bench/make_kiosk_turns.py --out var/kiosk --n 2000

Writes ``OUT/{train,val,test}.jsonl`` (the fusion manifest format, see docs/fusion.md),
``OUT/audio/*.wav`` (16 kHz mono PCM16, espeak-ng + noise) and ``OUT/images/*.jpg`` (320x240).

How the labels are made (so that modalities are complementary, by construction):

- intent: 30 % of turns use an *ambiguous* wording ("can you help me with this?") whose intent is
  fixed by what the camera shows (receipt -> return_item, price tag -> price_check, product box or
  store map -> find_product, payment card -> payment_help, opening-hours sign -> store_hours,
  nothing -> other). Other turns use an intent-specific wording; their image matches the intent
  60 % of the time and is random otherwise. 5 % of turns are silent: only an image, intent from
  the image, no emotion label.
- emotion: typed turns carry it in the wording only; spoken turns always in the prosody
  (negative: fast, high, loud; positive: slow, higher pitched; neutral: plain) and in the
  wording for half of them.
- addressee: typed turns are addressed to the kiosk; a spoken turn is not when it opens by
  talking to a companion ("Sam, ...") or when no face is in view.
- splits are by template: every wording, emotion phrase and companion name belongs to one split,
  so test phrasings are never seen in training.
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import subprocess
import sys
import wave
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageFont

SAMPLE_RATE = 16000
IMAGE_SIZE = (320, 240)
SPLITS = ("train", "val", "test")
SPLIT_SHARE = (0.6, 0.2, 0.2)

PRODUCTS = ["milk", "batteries", "a phone charger", "coffee beans", "shampoo", "light bulbs", "rice",
            "olive oil", "a kettle", "dog food", "paper towels", "headphones", "tea", "sunscreen",
            "a notebook", "pasta", "toothpaste", "an umbrella", "bread", "apples"]

# Intent-specific wordings; {p} is a product.
TEMPLATES: dict[str, list[str]] = {
    "greeting": ["Hello there.", "Hi!", "Good morning.", "Hey, hi.", "Hello, is anyone here?",
                 "Good afternoon.", "Hi, nice to meet you.", "Hello hello.", "Morning!", "Hey there.",
                 "Good evening.", "Hi, how are you?"],
    "goodbye": ["Goodbye.", "Bye, thanks.", "See you later.", "That's all, bye.", "Have a nice day, bye.",
                "I'm done, goodbye.", "Okay, see you.", "Bye bye.", "Thanks, that is everything.",
                "Catch you later.", "Good night.", "I'll be going now."],
    "return_item": ["I want to return {p}.", "Can I get a refund for {p}?", "How do I return {p}?",
                    "I'd like my money back for {p}.", "This {p} is broken, I want to return it.",
                    "Can I exchange {p}?", "What is your return policy?", "I bought {p} and need to return it.",
                    "Where do I bring returns?", "I need a refund please.", "Can I swap {p} for another one?",
                    "The {p} I bought doesn't work, refund please."],
    "price_check": ["How much is {p}?", "What does {p} cost?", "What's the price of {p}?",
                    "Is {p} on sale?", "How much do you charge for {p}?", "Is there a discount on {p}?",
                    "What is the price here?", "How expensive is {p}?", "Does {p} cost more than five dollars?",
                    "Can you check a price for me?", "Is {p} cheaper this week?", "What would {p} cost me?"],
    "find_product": ["Where can I find {p}?", "Do you have {p}?", "Which aisle is {p} in?",
                     "I'm looking for {p}.", "Where is {p}?", "Is {p} in stock?", "Can you show me where {p} is?",
                     "I can't find {p}.", "Do you sell {p}?", "Where do you keep {p}?",
                     "Help me locate {p}.", "Which shelf has {p}?"],
    "store_hours": ["When do you close?", "What time do you open tomorrow?", "Are you open on Sunday?",
                    "What are your opening hours?", "How late are you open tonight?", "When does the store open?",
                    "Are you open on holidays?", "Until when can I shop today?", "Do you open early on Saturday?",
                    "What time is closing?", "Is the shop open at eight?", "What are the hours this weekend?"],
    "payment_help": ["My card was declined.", "Can I pay with my phone?", "Do you take credit cards?",
                     "The card reader isn't working.", "Can I pay in cash?", "How do I pay contactless?",
                     "My payment didn't go through.", "Can I split the payment?", "Do you accept debit cards?",
                     "I was charged twice.", "Why was my card rejected?", "Can I pay with a gift card?"],
    "talk_to_human": ["I want to talk to a person.", "Can I speak to a manager?", "Get me a real person please.",
                      "Is there a human I can talk to?", "Call a staff member please.", "I need an employee.",
                      "Let me talk to someone at the desk.", "Can somebody from the staff come here?",
                      "Connect me to customer service.", "I'd rather speak to a human.", "Find me an assistant please.",
                      "Please send a shop assistant."],
    "other": ["What's the weather like today?", "Tell me a joke.", "Where is the nearest bus stop?",
              "Is there wifi here?", "Can I park outside?", "Where are the toilets?", "What day is it?",
              "Do you have a lost and found?", "Is the cafe upstairs open?", "Can I charge my phone somewhere?",
              "Who won the game last night?", "Is there an ATM nearby?"],
}

# Wordings whose intent only the camera can tell.
AMBIGUOUS = ["Can you help me with this?", "What about this one?", "I have a question about this.",
             "Could you take a look at this?", "What can I do with this?", "Is this okay?",
             "I need some help here.", "Quick question about this thing.", "So, about this one.",
             "Can you tell me something about this?", "What do I do with this?", "Look at this please.",
             "Hey, check this out for me.", "Can you sort this out?", "I was wondering about this."]

EMOTION_PHRASES = {
    "negative": ["This is ridiculous.", "I'm really annoyed.", "Ugh, seriously.", "I'm so frustrated.",
                 "This is terrible.", "I've been waiting forever.", "Honestly, this is awful.", "I'm fed up.",
                 "What a mess.", "This is so annoying."],
    "positive": ["Great, thanks so much!", "Lovely, thank you!", "Wonderful.", "I love this shop!",
                 "Awesome, thanks!", "Perfect, you're great.", "Brilliant, thank you.", "That's fantastic.",
                 "How nice!", "Amazing, thanks!"],
}
COMPANIONS = ["Sam", "Mom", "Honey", "Dad", "Alex", "Jamie", "Chris", "Grandma", "Kids", "Taylor"]

# What the camera shows -> the intent an ambiguous wording then has.
KIND_INTENT = {"receipt": "return_item", "price_tag": "price_check", "product_box": "find_product",
               "store_map": "find_product", "payment_card": "payment_help", "hours_sign": "store_hours",
               "empty": "other"}
INTENT_KINDS = {"return_item": ["receipt"], "price_check": ["price_tag"],
                "find_product": ["product_box", "store_map"], "payment_help": ["payment_card"],
                "store_hours": ["hours_sign"], "greeting": ["empty"], "goodbye": ["empty"],
                "talk_to_human": ["empty"], "other": ["empty"]}
KINDS = list(KIND_INTENT)

# espeak-ng voices and prosody per emotion: (speed wpm, pitch 0-99, amplitude 0-200) ranges.
VOICES = ["en-us", "en-gb", "en-us+f3", "en-gb+f2", "en-us+m3", "en-gb-x-rp", "en-029", "en-us+f4"]
PROSODY = {"neutral": ((145, 175), (35, 55), (90, 110)),
           "negative": ((205, 240), (62, 78), (160, 190)),
           "positive": ((120, 140), (72, 92), (110, 130))}


def split_pool(items: list[str], rng: random.Random) -> dict[str, list[str]]:
    """Assign whole templates to splits (60/20/20, at least one each)."""
    items = items[:]
    rng.shuffle(items)
    n = len(items)
    n_val = max(1, round(n * SPLIT_SHARE[1]))
    n_test = max(1, round(n * SPLIT_SHARE[2]))
    return {"train": items[: n - n_val - n_test], "val": items[n - n_val - n_test : n - n_test],
            "test": items[n - n_test :]}


@dataclass
class Turn:
    id: str
    split: str
    intent: str
    emotion: str | None
    addressee: bool
    text: str | None        # what is said or typed (None for a silent turn)
    spoken: bool
    kind: str | None        # image kind, None when no camera frame
    face: bool
    ambiguous: bool
    template: str
    prosody: tuple[str, int, int, int] | None = None  # voice, speed, pitch, amplitude


def plan_turns(n: int, seed: int, spoken_share: float) -> list[Turn]:
    rng = random.Random(seed)
    pools = {k: split_pool(v, rng) for k, v in TEMPLATES.items()}
    amb = split_pool(AMBIGUOUS, rng)
    emo = {k: split_pool(v, rng) for k, v in EMOTION_PHRASES.items()}
    comp = split_pool(COMPANIONS, rng)
    turns = []
    for i in range(n):
        split = rng.choices(SPLITS, weights=SPLIT_SHARE)[0]
        r = rng.random()
        silent = r < 0.05
        ambiguous = not silent and r < 0.35
        spoken = not silent and rng.random() < spoken_share
        emotion = rng.choices(["neutral", "negative", "positive"], weights=[0.5, 0.25, 0.25])[0]
        if silent or ambiguous:
            kind: str | None = rng.choice(KINDS)
            intent = KIND_INTENT[kind]  # type: ignore[index]
            template = "silent" if silent else rng.choice(amb[split])
            text = None if silent else template
        else:
            intent = rng.choice(list(TEMPLATES))
            template = rng.choice(pools[intent][split])
            text = template.replace("{p}", rng.choice(PRODUCTS))
            has_image = spoken or rng.random() < 0.8
            if not has_image:
                kind = None
            elif rng.random() < 0.6:
                kind = rng.choice(INTENT_KINDS[intent])
            else:
                kind = rng.choice(KINDS)
        # Emotion: wording for typed turns, prosody (+ wording half the time) for spoken ones.
        if text is not None and emotion != "neutral" and (not spoken or rng.random() < 0.5):
            phrase = rng.choice(emo[emotion][split])
            text = f"{phrase} {text}" if rng.random() < 0.5 else f"{text} {phrase}"
        addressee = True
        face = rng.random() < 0.7
        if spoken:
            kind = kind or rng.choice(KINDS)
            c = rng.random()
            if c < 0.15:
                name = rng.choice(comp[split])
                text = f"{name}, {text[0].lower()}{text[1:]}" if text else text
                addressee = False
                face = rng.random() < 0.5
            elif c < 0.35:
                addressee, face = False, False
            else:
                face = True
        if silent:
            face = True
        if kind is None:
            face = False
        prosody = None
        if spoken:
            sp, pi, am = PROSODY[emotion]
            prosody = (rng.choice(VOICES), rng.randint(*sp), rng.randint(*pi), rng.randint(*am))
        turns.append(Turn(id=f"k{i:05d}", split=split, intent=intent, emotion=None if silent else emotion,
                          addressee=addressee, text=text, spoken=spoken, kind=kind, face=face,
                          ambiguous=ambiguous, template=template, prosody=prosody))
    return turns


# ---- speech ---------------------------------------------------------------------------------

def synth(text: str, prosody: tuple[str, int, int, int], out: Path, rng: np.random.Generator) -> None:
    """espeak-ng -> 16 kHz mono, short silence pads, Gaussian noise at 12-30 dB SNR -> WAV."""
    voice, speed, pitch, amp = prosody
    raw = subprocess.run(["espeak-ng", "-v", voice, "-s", str(speed), "-p", str(pitch), "-a", str(amp),
                          "--stdout", text], check=True, capture_output=True).stdout
    pcm = subprocess.run(["sox", "-t", "wav", "-", "-t", "raw", "-r", str(SAMPLE_RATE), "-c", "1",
                          "-e", "signed-integer", "-b", "16", "-"], input=raw, check=True,
                         capture_output=True).stdout
    x = np.frombuffer(pcm, dtype=np.int16).astype(np.float32) / 32768.0
    pad = np.zeros(int(SAMPLE_RATE * rng.uniform(0.1, 0.4)), dtype=np.float32)
    x = np.concatenate([pad, x, pad[: len(pad) // 2]])
    power = float(np.mean(x**2)) + 1e-9
    snr_db = rng.uniform(12, 30)
    x = x + rng.normal(0, np.sqrt(power / 10 ** (snr_db / 10)), size=x.shape).astype(np.float32)
    y = (np.clip(x, -1, 1) * 32767).astype(np.int16)
    with wave.open(str(out), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(SAMPLE_RATE)
        w.writeframes(y.tobytes())


# ---- images ---------------------------------------------------------------------------------

def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow without FreeType
        return ImageFont.load_default()


def _face_crop() -> Image.Image:
    from skimage import data

    return Image.fromarray(data.astronaut()[35:200, 150:300])  # one frontal face (Haar-detectable)


def _background(rng: random.Random) -> Image.Image:
    W, H = IMAGE_SIZE
    base = tuple(rng.randint(150, 235) for _ in range(3))
    im = Image.new("RGB", IMAGE_SIZE, base)  # type: ignore[arg-type]
    d = ImageDraw.Draw(im)
    if rng.random() < 0.7:  # shelves with goods
        for y in range(rng.randint(20, 50), H, rng.randint(45, 70)):
            d.rectangle([0, y, W, y + 4], fill=(120, 100, 80))
            x = rng.randint(0, 20)
            while x < W:
                w = rng.randint(10, 30)
                d.rectangle([x, y - rng.randint(15, 35), x + w, y], fill=tuple(rng.randint(40, 220) for _ in range(3)))
                x += w + rng.randint(2, 8)
    return im


def _object(kind: str, rng: random.Random) -> Image.Image | None:
    """Render one object (RGBA) of ``kind``; None for an empty scene."""
    f_small, f_big = _font(rng.randint(9, 12)), _font(rng.randint(22, 30))
    if kind == "empty":
        return None
    if kind == "receipt":
        w, h = rng.randint(90, 120), rng.randint(150, 200)
        im = Image.new("RGBA", (w, h), (250, 250, 245, 255))
        d = ImageDraw.Draw(im)
        d.text((8, 5), rng.choice(["SHOPMART", "KIOSK STORE", "MARKET 24", "CORNER SHOP"]), fill="black", font=f_small)
        y = 25
        while y < h - 45:
            d.text((6, y), f"{rng.choice(PRODUCTS)[:9].upper()}", fill=(40, 40, 40), font=f_small)
            d.text((w - 34, y), f"{rng.randint(1, 29)}.{rng.randint(0, 99):02d}", fill=(40, 40, 40), font=f_small)
            y += 14
        d.line([6, h - 42, w - 6, h - 42], fill="black")
        d.text((6, h - 38), f"TOTAL {rng.randint(10, 99)}.{rng.randint(0, 99):02d}", fill="black", font=f_small)
        for x in range(8, w - 8, 3):  # barcode
            if rng.random() < 0.6:
                d.line([x, h - 20, x, h - 6], fill="black", width=rng.choice([1, 2]))
        return im
    if kind == "price_tag":
        w, h = rng.randint(110, 150), rng.randint(70, 95)
        im = Image.new("RGBA", (w, h), (0, 0, 0, 0))
        d = ImageDraw.Draw(im)
        color = rng.choice([(255, 220, 40), (255, 160, 30), (250, 80, 60), (255, 255, 255)])
        d.rounded_rectangle([0, 0, w - 1, h - 1], radius=8, fill=(*color, 255), outline=(0, 0, 0, 255), width=2)
        d.ellipse([6, h // 2 - 5, 16, h // 2 + 5], fill=(60, 60, 60, 255))
        d.text((24, 8), rng.choice(["SALE", "PRICE", "NOW", "OFFER"]), fill="black", font=f_small)
        d.text((22, h // 2 - 10), f"${rng.randint(1, 99)}.{rng.choice(['99', '49', '00', '95'])}", fill="black", font=f_big)
        return im
    if kind == "product_box":
        w, h = rng.randint(90, 130), rng.randint(100, 150)
        im = Image.new("RGBA", (w + 20, h + 20), (0, 0, 0, 0))
        d = ImageDraw.Draw(im)
        c = tuple(rng.randint(30, 230) for _ in range(3))
        dark = tuple(int(v * 0.6) for v in c)
        d.polygon([(w, 20), (w + 20, 0), (w + 20, h), (w, h + 20)], fill=(*dark, 255))
        d.polygon([(0, 20), (20, 0), (w + 20, 0), (w, 20)], fill=(*tuple(min(255, int(v * 1.2)) for v in c), 255))
        d.rectangle([0, 20, w, h + 20], fill=(*c, 255), outline=(0, 0, 0, 255))
        d.rectangle([0, 20 + h // 3, w, 20 + h // 3 + 18], fill=(255, 255, 255, 255))
        d.text((6, 22 + h // 3), rng.choice(["CRUNCHY", "FRESH", "ULTRA", "BRAND", "BIO"]), fill="black", font=f_small)
        d.ellipse([w // 2 - 18, h - 30, w // 2 + 18, h + 6], fill=(*tuple(rng.randint(0, 255) for _ in range(3)), 255))
        return im
    if kind == "store_map":
        w, h = rng.randint(170, 220), rng.randint(120, 160)
        im = Image.new("RGBA", (w, h), (235, 240, 250, 255))
        d = ImageDraw.Draw(im)
        d.rectangle([0, 0, w - 1, h - 1], outline=(30, 30, 90, 255), width=3)
        n = rng.randint(4, 7)
        for i in range(n):
            x = 12 + i * (w - 24) // n
            d.rectangle([x, 22, x + (w - 24) // n - 8, h - 22], fill=(150, 180, 220, 255), outline=(30, 30, 90, 255))
            d.text((x + 2, 24), f"{i + 1}", fill="black", font=f_small)
        d.text((6, 4), rng.choice(["STORE MAP", "FLOOR PLAN", "YOU ARE HERE"]), fill=(30, 30, 90), font=f_small)
        px, py = rng.randint(10, w - 10), h - 12
        d.ellipse([px - 6, py - 6, px + 6, py + 6], fill=(230, 20, 20, 255))
        return im
    if kind == "payment_card":
        w, h = rng.randint(150, 180), 0
        h = int(w / 1.586)
        im = Image.new("RGBA", (w, h), (0, 0, 0, 0))
        d = ImageDraw.Draw(im)
        c1 = np.array([rng.randint(0, 200) for _ in range(3)])
        c2 = np.array([rng.randint(0, 200) for _ in range(3)])
        for x in range(w):
            c = tuple(int(v) for v in c1 + (c2 - c1) * x / w)
            d.line([x, 0, x, h], fill=(*c, 255))
        mask = Image.new("L", (w, h), 0)
        ImageDraw.Draw(mask).rounded_rectangle([0, 0, w - 1, h - 1], radius=10, fill=255)
        im.putalpha(mask)
        d.rounded_rectangle([16, h // 3, 40, h // 3 + 18], radius=3, fill=(220, 190, 90, 255))
        digits = " ".join(f"{rng.randint(0, 9999):04d}" for _ in range(4))
        d.text((12, h * 2 // 3), digits, fill="white", font=f_small)
        d.text((w - 50, 8), rng.choice(["VISA", "BANK", "DEBIT", "CARD"]), fill="white", font=f_small)
        return im
    if kind == "hours_sign":
        w, h = rng.randint(130, 170), rng.randint(110, 150)
        im = Image.new("RGBA", (w, h), (0, 0, 0, 0))
        d = ImageDraw.Draw(im)
        bg = rng.choice([(20, 20, 20), (30, 60, 40), (250, 250, 250)])
        fg = "white" if sum(bg) < 300 else "black"
        d.rectangle([0, 0, w - 1, h - 1], fill=(*bg, 255), outline=(200, 160, 60, 255), width=3)
        d.text((10, 6), rng.choice(["OPEN", "HOURS", "WELCOME"]), fill=(230, 60, 60), font=f_big)
        y = 42
        for day in ("Mon-Fri", "Sat", "Sun"):
            d.text((10, y), f"{day} {rng.randint(7, 10)}-{rng.randint(17, 22)}", fill=fg, font=f_small)
            y += 16
        return im
    raise ValueError(kind)


def render(kind: str | None, face: bool, face_img: Image.Image, rng: random.Random, out: Path) -> None:
    W, H = IMAGE_SIZE
    im = _background(rng)
    if face:
        s = rng.randint(95, 135)
        f = face_img.resize((s, int(s * face_img.height / face_img.width)))
        if rng.random() < 0.5:
            f = f.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        x = rng.choice([rng.randint(0, 40), rng.randint(W - s - 40, W - s)])
        im.paste(f, (x, rng.randint(0, 30)))
    obj = _object(kind, rng) if kind else None
    if obj is not None:
        obj = obj.rotate(rng.uniform(-15, 15), expand=True, resample=Image.Resampling.BICUBIC)
        scale = rng.uniform(0.9, 1.25)
        obj = obj.resize((max(1, int(obj.width * scale)), max(1, int(obj.height * scale))))
        x = rng.randint(max(0, W // 2 - obj.width // 2 - 50), max(0, min(W - obj.width, W // 2 - obj.width // 2 + 50)))
        y = rng.randint(max(0, H - obj.height - 30), max(0, H - obj.height))
        im.paste(obj, (x, y), obj)
    if rng.random() < 0.3:
        im = im.filter(ImageFilter.GaussianBlur(rng.uniform(0.3, 1.0)))
    arr = np.asarray(im).astype(np.int16) + np.random.default_rng(rng.randint(0, 2**31)).normal(0, 6, (H, W, 3)).astype(np.int16)
    Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8)).save(out, quality=88)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=Path("var/kiosk"))
    ap.add_argument("--n", type=int, default=2000, help="number of turns")
    ap.add_argument("--spoken", type=float, default=0.4, help="share of spoken turns")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--workers", type=int, default=2)
    args = ap.parse_args(argv)
    for tool in ("espeak-ng", "sox"):
        if shutil.which(tool) is None:
            print(f"{tool} is required", file=sys.stderr)
            return 2
    out: Path = args.out
    (out / "audio").mkdir(parents=True, exist_ok=True)
    (out / "images").mkdir(parents=True, exist_ok=True)
    turns = plan_turns(args.n, args.seed, args.spoken)
    face_img = _face_crop()

    def make(t: Turn) -> dict[str, object]:
        seed = int(t.id[1:]) * 7919 + args.seed
        row: dict[str, object] = {"id": t.id}
        if t.spoken and t.text and t.prosody:
            path = out / "audio" / f"{t.id}.wav"
            if not path.exists():
                synth(t.text, t.prosody, path, np.random.default_rng(seed))
            row["audio"] = f"audio/{t.id}.wav"
        elif t.text:
            row["text"] = t.text
        if t.kind is not None:
            path = out / "images" / f"{t.id}.jpg"
            if not path.exists():
                render(t.kind, t.face, face_img, random.Random(seed), path)
            row["image"] = f"images/{t.id}.jpg"
        row["intent"] = t.intent
        if t.emotion is not None:
            row["emotion"] = t.emotion
        row["addressee"] = t.addressee
        # Extra keys (ignored by the loader) for analysis.
        row.update({"spoken_text": t.text if t.spoken else None, "kind": t.kind, "face": t.face,
                    "ambiguous": t.ambiguous, "template": t.template, "prosody": t.prosody})
        return row

    with ThreadPoolExecutor(args.workers) as pool:
        rows = list(pool.map(make, turns))
    for split in SPLITS:
        with open(out / f"{split}.jsonl", "w") as fh:
            for t, row in zip(turns, rows, strict=True):
                if t.split == split:
                    fh.write(json.dumps(row) + "\n")
    counts = Counter(t.split for t in turns)
    print(f"wrote {len(turns)} turns to {out}: {dict(counts)}; spoken {sum(t.spoken for t in turns)}, "
          f"ambiguous {sum(t.ambiguous for t in turns)}, silent {sum(t.text is None for t in turns)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
