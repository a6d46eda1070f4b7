"""The three InstructGPT steps as this project runs them: SFT -> reward model -> PPO, left to right.

    python pic/draw_instructgpt.py    # from the repo root; writes pic/instructgpt_steps.png (1600 x 600 px)

Each step is a panel with its data, what it trains and its loss; the output directories sit between the
panels, with arrows to the steps that load them (out/sft: RM backbone, PPO actor and reference; out/rm:
PPO reward model and critic). Dashed boxes are frozen models. Drawn with matplotlib only.
"""
import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from matplotlib.patches import FancyBboxPatch

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "instructgpt_steps.png")
SFT, RM, PPO = "#e3eef9", "#fdebd3", "#e2f1e0"  # panel colours, one per step
EDGE = {SFT: "#4a7bb0", RM: "#c8873a", PPO: "#4f9155"}
DATA = "#f5f5f5"
FONT = 7.6

fig = plt.figure(figsize=(160 / 15, 60 / 15), dpi=150)  # 1 unit = 10 px
ax = fig.add_axes([0, 0, 1, 1])
ax.set_xlim(0, 160)
ax.set_ylim(0, 60)
ax.axis("off")


def box(x, y, w, h, text, face, edge="#555555", style="-", bold=False, mono=False, size=FONT):
    """A rounded box with centred text; (x, y) is the lower-left corner."""
    ax.add_patch(FancyBboxPatch((x, y), w, h, boxstyle="round,pad=0,rounding_size=1.2", facecolor=face,
                                edgecolor=edge, linewidth=1.0, linestyle=style))
    ax.text(x + w / 2, y + h / 2, text, ha="center", va="center", fontsize=size, linespacing=1.35,
            fontweight="bold" if bold else "normal", family="monospace" if mono else "sans-serif")


def arrow(points, color="#444444"):
    """An orthogonal (or straight) line through points, with an arrow head on the last segment."""
    xs, ys = zip(*points)
    ax.plot(xs[:-1], ys[:-1], color=color, linewidth=1.1, solid_capstyle="round")
    ax.annotate("", xy=points[-1], xytext=points[-2],
                arrowprops=dict(arrowstyle="-|>", color=color, linewidth=1.1, mutation_scale=9, shrinkA=0, shrinkB=0))


def panel(x, w, face, title, script):
    ax.add_patch(FancyBboxPatch((x, 8), w, 50, boxstyle="round,pad=0,rounding_size=2", facecolor=face,
                                edgecolor=EDGE[face], linewidth=1.2))
    ax.text(x + 2, 55, title, ha="left", va="center", fontsize=9.5, fontweight="bold")
    ax.text(x + 2, 51.5, script, ha="left", va="center", fontsize=8, family="monospace", color="#333333")


def output(x, y, name, face):
    box(x, y - 2.5, 10, 5, name, "white", edge=EDGE[face], bold=True, mono=True, size=8)


# Step 1: SFT
panel(1, 34, SFT, "Step 1  SFT", "train_sft.py")
box(3, 34, 30, 13, "Demonstrations\ninstruction → response\nds/sft_train.jsonl", DATA)
box(3, 12, 30, 17, "Fine-tune the model\n(embedded tiny OPT or\nfacebook/opt-125m)\nloss: next-token cross-entropy\non response tokens + EOS only",
    "white", edge=EDGE[SFT])
arrow([(18, 34), (18, 29)])
output(37, 20.5, "out/sft", SFT)
arrow([(33, 20.5), (37, 20.5)])

# Step 2: reward model
panel(49, 34, RM, "Step 2  Reward model", "train_rm.py")
box(51, 34, 30, 13, "K ranked responses per prompt\nds/rm_train_ranked.jsonl\n(ranked by the gold judge,\nstanding in for labellers)", DATA)
box(51, 12, 30, 17, "SFT backbone + scalar head\nscore r(x, y) at the EOS\nloss: -log σ(r_chosen - r_rejected)\nover all K(K-1)/2 pairs",
    "white", edge=EDGE[RM])
arrow([(66, 34), (66, 29)])
arrow([(47, 20.5), (51, 20.5)])
output(85, 20.5, "out/rm", RM)
arrow([(81, 20.5), (85, 20.5)])

# Step 3: PPO, four models on the left, one iteration on the right
panel(97, 62, PPO, "Step 3  PPO", "train_rlhf.py")
models = [("reward model\nout/rm, frozen", 42, "--"), ("critic (values)\nfrom out/rm, trained", 33.5, "-"),
          ("actor (policy)\nfrom out/sft, trained", 25, "-"), ("reference\nout/sft, frozen", 16.5, "--")]
for text, y, style in models:
    box(102, y - 3.5, 19.5, 7, text, "white", edge=EDGE[PPO], style=style)
arrow([(95, 20.5), (98.5, 20.5), (98.5, 42), (102, 42)], color=EDGE[RM])  # out/rm -> reward model, critic
arrow([(98.5, 33.5), (102, 33.5)], color=EDGE[RM])
arrow([(42, 18), (42, 4), (99.8, 4), (99.8, 16.5), (102, 16.5)], color=EDGE[SFT])  # out/sft -> reference, actor
arrow([(99.8, 16.5), (99.8, 25), (102, 25)], color=EDGE[SFT])
steps = ["prompts (ds/prompts_train.jsonl)\n→ the actor samples responses",
         "frozen RM scores each response;\nper-token KL penalty to the reference",
         "critic gives values → GAE\n→ advantages, returns",
         "clipped policy loss + value loss\n(+ optional ptx LM loss)"]
for i, text in enumerate(steps):
    y = 43 - 8 * i
    box(124, y, 33.5, 6.4, text, DATA if i == 0 else "white", edge=EDGE[PPO])
    if i:
        arrow([(140.75, y + 8), (140.75, y + 6.4)])
output(135.75, 13, "out/rlhf", PPO)
arrow([(140.75, 19), (140.75, 15.5)])
ax.text(157, 51.5, "one iteration, repeated", ha="right", va="center", fontsize=FONT - 0.6, color="#555555", style="italic")
ax.text(103, 10.2, "dashed: frozen", fontsize=FONT - 0.6, color="#555555", style="italic")

fig.savefig(OUT, dpi=150, facecolor="white")
print(f"wrote {OUT}")
