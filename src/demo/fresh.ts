/**
 * Sentences written for this project (not taken from the UDHR or any other text) in the demo
 * languages: three per language, about schooling, about criticising a government and about paid
 * holidays, worded differently from the Declaration. The build routes them with the trained gate
 * and reports how many reach their own language's adapter first (report.json, fresh_sentences);
 * test/demo-pack.test.ts asserts that all of them do for the small build's languages.
 */
export const FRESH_SENTENCES: Readonly<Record<string, readonly string[]>> = {
  en: [
    'Every child should be able to go to a good school close to home.',
    'Nobody may be thrown in prison just for criticising the government.',
    'After a long week at the factory, workers deserve a few days of paid holiday.',
  ],
  de: [
    'Jedes Kind sollte in der Nähe seines Zuhauses eine gute Schule besuchen können.',
    'Niemand darf ins Gefängnis geworfen werden, nur weil er die Regierung kritisiert.',
    'Nach einer langen Woche in der Fabrik haben die Arbeiter ein paar Tage bezahlten Urlaub verdient.',
  ],
  nl: [
    'Elk kind moet naar een goede school dicht bij huis kunnen gaan.',
    'Niemand mag in de gevangenis worden gegooid alleen omdat hij kritiek heeft op de regering.',
    'Na een lange week in de fabriek verdienen de arbeiders een paar dagen betaalde vakantie.',
  ],
  sv: [
    'Varje barn ska kunna gå i en bra skola nära hemmet.',
    'Ingen får sättas i fängelse bara för att ha kritiserat regeringen.',
    'Efter en lång vecka på fabriken förtjänar arbetarna några dagars betald semester.',
  ],
  fr: [
    'Chaque enfant devrait pouvoir aller dans une bonne école près de chez lui.',
    'Personne ne peut être jeté en prison simplement pour avoir critiqué le gouvernement.',
    'Après une longue semaine à l’usine, les ouvriers méritent quelques jours de congés payés.',
  ],
  es: [
    'Cada niño debería poder ir a una buena escuela cerca de su casa.',
    'Nadie puede ser encarcelado solo por criticar al gobierno.',
    'Después de una semana larga en la fábrica, los obreros merecen unos días de vacaciones pagadas.',
  ],
  pt: [
    'Cada criança deveria poder frequentar uma boa escola perto de casa.',
    'Ninguém pode ser preso apenas por criticar o governo.',
    'Depois de uma longa semana na fábrica, os operários merecem alguns dias de férias pagas.',
  ],
  it: [
    'Ogni bambino dovrebbe poter andare in una buona scuola vicino a casa.',
    'Nessuno può essere messo in prigione solo per aver criticato il governo.',
    'Dopo una lunga settimana in fabbrica, gli operai meritano qualche giorno di ferie pagate.',
  ],
  pl: [
    'Każde dziecko powinno móc chodzić do dobrej szkoły blisko domu.',
    'Nikt nie może trafić do więzienia tylko za krytykowanie rządu.',
    'Po długim tygodniu w fabryce robotnicy zasługują na kilka dni płatnego urlopu.',
  ],
  cs: [
    'Každé dítě by mělo mít možnost chodit do dobré školy blízko domova.',
    'Nikdo nesmí být uvězněn jen proto, že kritizoval vládu.',
    'Po dlouhém týdnu v továrně si dělníci zaslouží několik dní placené dovolené.',
  ],
  ru: [
    'Каждый ребёнок должен иметь возможность ходить в хорошую школу рядом с домом.',
    'Никого нельзя сажать в тюрьму только за критику правительства.',
    'После долгой недели на заводе рабочие заслуживают несколько дней оплачиваемого отпуска.',
  ],
  uk: [
    'Кожна дитина повинна мати змогу ходити до доброї школи поблизу дому.',
    'Нікого не можна саджати до вʼязниці лише за критику уряду.',
    'Після довгого тижня на заводі робітники заслуговують на кілька днів оплачуваної відпустки.',
  ],
  el: [
    'Κάθε παιδί πρέπει να μπορεί να πηγαίνει σε ένα καλό σχολείο κοντά στο σπίτι του.',
    'Κανείς δεν μπορεί να φυλακιστεί μόνο επειδή επέκρινε την κυβέρνηση.',
    'Μετά από μια μεγάλη εβδομάδα στο εργοστάσιο, οι εργάτες αξίζουν λίγες μέρες άδειας με αποδοχές.',
  ],
  ar: [
    'يجب أن يتمكن كل طفل من الذهاب إلى مدرسة جيدة قريبة من بيته.',
    'لا يجوز سجن أي شخص لمجرد أنه انتقد الحكومة.',
    'بعد أسبوع طويل في المصنع يستحق العمال بضعة أيام من الإجازة المدفوعة.',
  ],
  hi: [
    'हर बच्चे को अपने घर के पास एक अच्छे स्कूल में पढ़ने का मौका मिलना चाहिए।',
    'किसी को भी सिर्फ़ सरकार की आलोचना करने के लिए जेल में नहीं डाला जा सकता।',
    'कारखाने में एक लंबे हफ़्ते के बाद मज़दूरों को कुछ दिनों की सवेतन छुट्टी मिलनी चाहिए।',
  ],
  zh: [
    '每个孩子都应该能够在家附近上一所好学校。',
    '任何人都不能仅仅因为批评政府而被关进监狱。',
    '在工厂忙了一个星期以后，工人应该有几天带薪休假。',
  ],
  ja: [
    'すべての子どもは家の近くの良い学校に通えるべきだ。',
    '政府を批判したというだけで誰かを刑務所に入れてはならない。',
    '工場での長い一週間の後、労働者には数日間の有給休暇がふさわしい。',
  ],
};
