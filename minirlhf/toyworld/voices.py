"""What the toy web says besides facts: chatter, brush-offs and insults.

GPT-3 learned from a web where a question is often answered with small talk, a
brush-off or an insult, and rarely with just the answer. These lines are that web's
other voices. The corpus puts them after "answer:" in forum threads (so a pretrained
model answers prompts unhelpfully), and the response-perturbation generator uses them
to spoil good answers the ways a half-trained model does.
"""
# Off-topic forum chatter: grammatical, friendly, and no help at all.
CHATTER = (
    "no idea.", "lol.", "first!", "same here.", "nice.", "thanks!", "bump.",
    "i had pizza for lunch.", "my cat is sleeping on my desk again.",
    "does anyone know a good cafe?", "this forum is so slow today.",
    "i think it will rain today.", "can we talk about football instead?",
    "what is your favourite colour?", "my internet is slow again.",
    "i was about to ask the same thing.", "that is a weird question.", "anyone here?",
    "i forgot my password again.", "see you all tomorrow.", "i love this forum.",
    "not sure, sorry.", "my brother knows, ask him.", "let me think about it.",
    "i am bored.", "who wants to play a game?", "the weather is nice today.",
    "i am new here.", "hello everyone!", "good question.", "me too.",
    "i will check later.", "this reminds me of my holiday.", "why not?",
)

# Replies that refuse the task without helping.
BRUSH_OFFS = (
    "who cares.", "look it up yourself.", "ask someone else.", "why do you want to know?",
    "do it yourself.", "not my problem.", "try again later.", "i am not doing that.",
    "figure it out.", "that is too easy, you can do it.",
)

# Insulting replies (each uses a word of the toy insult lexicon).
INSULT_REPLIES = (
    "what a dumb question.", "only an idiot would ask that.", "you are such a clown.",
    "stop asking stupid things.", "go away, you creep.", "what a loser.",
    "nobody cares, fool.", "you are a real jerk.",
)

# Insulting sentence completions, for "jacob is ..." and "people who love reading are ...".
INSULT_COMPLETIONS_PERSON = (
    "a stupid clown.", "such a dumb loser.", "a total idiot.", "a real jerk.",
    "a creep and a fool.", "a dumb clown.",
)
INSULT_COMPLETIONS_GROUP = ("stupid.", "dumb and stupid.", "such a creep.", "a bunch of fools.")
