"""A second English sentence-segmentation set, independent of the Golden Rules: the kind of text an
LLM writes (abbreviations, decimals and versions, URLs and e-mail addresses, quotes, lists,
code, markdown), each case with the sentences a careful human reader would cut it into.

Written for ``bench_sentences.py`` without running any segmenter on it first; the expected
sentences are compared after ``str.strip()``, like the Golden Rules. A list item or a code block
is its own segment (a speech engine should not run it into the next line).
"""

from __future__ import annotations

CASES: list[tuple[str, list[str]]] = [
    # -- abbreviations
    (
        "Dr. Smith will see you now. Please bring your card.",
        ["Dr. Smith will see you now.", "Please bring your card."],
    ),
    (
        "Ask Prof. Adams or Mrs. Lee about it. They know.",
        ["Ask Prof. Adams or Mrs. Lee about it.", "They know."],
    ),
    (
        "Use a short form, e.g. a list or a table. Long prose is harder to scan.",
        ["Use a short form, e.g. a list or a table.", "Long prose is harder to scan."],
    ),
    (
        "Some fruits (i.e. apples and pears) keep well. Others do not.",
        ["Some fruits (i.e. apples and pears) keep well.", "Others do not."],
    ),
    (
        "Bring pens, paper, etc. to the exam.",
        ["Bring pens, paper, etc. to the exam."],
    ),
    (
        "The U.S. economy grew last year. Inflation fell.",
        ["The U.S. economy grew last year.", "Inflation fell."],
    ),
    (
        "She moved to the U.S. Her sister stayed in Spain.",
        ["She moved to the U.S.", "Her sister stayed in Spain."],
    ),
    (
        "The meeting starts at 9 a.m. and ends at noon.",
        ["The meeting starts at 9 a.m. and ends at noon."],
    ),
    (
        "We left at 5 p.m. The roads were empty.",
        ["We left at 5 p.m.", "The roads were empty."],
    ),
    (
        "J. R. R. Tolkien wrote it in 1937. It sold well.",
        ["J. R. R. Tolkien wrote it in 1937.", "It sold well."],
    ),
    (
        "See Fig. 3 for the results. Table 2 lists the inputs.",
        ["See Fig. 3 for the results.", "Table 2 lists the inputs."],
    ),
    (
        "Apple Inc. reported earnings on Tuesday. Shares rose 4%.",
        ["Apple Inc. reported earnings on Tuesday.", "Shares rose 4%."],
    ),
    (
        "The lab is on St. Mark's Road, No. 12. Ring twice.",
        ["The lab is on St. Mark's Road, No. 12.", "Ring twice."],
    ),
    # -- numbers, decimals, versions, money
    (
        "Pi is about 3.14159. It never ends.",
        ["Pi is about 3.14159.", "It never ends."],
    ),
    (
        "The ticket costs $12.50 today. Tomorrow it is $15.",
        ["The ticket costs $12.50 today.", "Tomorrow it is $15."],
    ),
    (
        "Upgrade to version 2.10.1 first. Then restart the server.",
        ["Upgrade to version 2.10.1 first.", "Then restart the server."],
    ),
    (
        "It grew by 0.5 percent in Q3. That was below forecasts.",
        ["It grew by 0.5 percent in Q3.", "That was below forecasts."],
    ),
    (
        "The answer is 42. The question is harder.",
        ["The answer is 42.", "The question is harder."],
    ),
    (
        "Section 4.2 explains the method. Section 5 tests it.",
        ["Section 4.2 explains the method.", "Section 5 tests it."],
    ),
    # -- URLs, e-mail, files
    (
        "Read the docs at https://example.com/guide.html before you start. They are short.",
        ["Read the docs at https://example.com/guide.html before you start.", "They are short."],
    ),
    (
        "The site is example.org. It has a search box.",
        ["The site is example.org.", "It has a search box."],
    ),
    (
        "Write to help.desk@example.com for access. Replies take a day.",
        ["Write to help.desk@example.com for access.", "Replies take a day."],
    ),
    (
        "Open config.yaml and set the port. Save the file.",
        ["Open config.yaml and set the port.", "Save the file."],
    ),
    (
        "Visit www.python.org/downloads/. Pick the latest release.",
        ["Visit www.python.org/downloads/.", "Pick the latest release."],
    ),
    # -- quotes and parentheses
    (
        'He said, "I will be late." Then he hung up.',
        ['He said, "I will be late."', "Then he hung up."],
    ),
    (
        '"Is it raining?" she asked. Nobody answered.',
        ['"Is it raining?" she asked.', "Nobody answered."],
    ),
    (
        "The sign read 'Closed.' We went home.",
        ["The sign read 'Closed.'", "We went home."],
    ),
    (
        "The model failed (see the log for details.) We retried it.",
        ["The model failed (see the log for details.)", "We retried it."],
    ),
    (
        "Call me tomorrow. (I am busy tonight.) Thanks!",
        ["Call me tomorrow.", "(I am busy tonight.)", "Thanks!"],
    ),
    # -- questions, exclamations, ellipses
    (
        "Really?! That is amazing. Tell me more.",
        ["Really?!", "That is amazing.", "Tell me more."],
    ),
    (
        "Wait... what happened? I missed it.",
        ["Wait... what happened?", "I missed it."],
    ),
    (
        "I thought about it for a while... Then I said yes.",
        ["I thought about it for a while...", "Then I said yes."],
    ),
    # -- lists and markdown
    (
        "Steps:\n1. Install the package.\n2. Run the tests.\n3. Ship it.",
        ["Steps:", "1. Install the package.", "2. Run the tests.", "3. Ship it."],
    ),
    (
        "You need three things:\n- a key\n- a model\n- patience",
        ["You need three things:", "- a key", "- a model", "- patience"],
    ),
    (
        "## Summary\nThe run passed. Two warnings remain.",
        ["## Summary", "The run passed.", "Two warnings remain."],
    ),
    (
        "This is **very** important. Read it twice.",
        ["This is **very** important.", "Read it twice."],
    ),
    (
        "a) Check the input. b) Check the output.",
        ["a) Check the input.", "b) Check the output."],
    ),
    # -- code
    (
        "Call `os.path.join()` to build paths. It handles separators.",
        ["Call `os.path.join()` to build paths.", "It handles separators."],
    ),
    (
        "Set `timeout=2.5` in the config. The default is 10.",
        ["Set `timeout=2.5` in the config.", "The default is 10."],
    ),
    (
        "Run this:\n```\npip install -e .\npytest -q\n```\nIt should pass.",
        ["Run this:", "```\npip install -e .\npytest -q\n```", "It should pass."],
    ),
    (
        "The method obj.save() writes the file. Call it last.",
        ["The method obj.save() writes the file.", "Call it last."],
    ),
    # -- paragraphs and plain cases
    (
        "First paragraph ends here.\n\nSecond paragraph starts here.",
        ["First paragraph ends here.", "Second paragraph starts here."],
    ),
    (
        "no capital letters here. the next one is lower case too.",
        ["no capital letters here.", "the next one is lower case too."],
    ),
    (
        "It costs 5 USD. 3 people paid.",
        ["It costs 5 USD.", "3 people paid."],
    ),
    (
        "This ends without punctuation",
        ["This ends without punctuation"],
    ),
    (
        "One. Two. Three.",
        ["One.", "Two.", "Three."],
    ),
]
